"""Small helpers both web apps (the playground and the admin dashboard) use: static files, server-sent
events, the same-origin check. Kept apart so `server` and `dashboard` import it, not each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

STATIC_DIR = Path(__file__).resolve().parent / "static"


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    payload = json.dumps(data, ensure_ascii=False)
    lines.extend(f"data: {line}" for line in payload.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another site (`Origin` not this host)."""
    origin = request.headers.get("origin")
    if not origin:
        return True  # not a browser form/fetch from another page
    return urlsplit(origin).netloc == request.headers.get("host", "")
