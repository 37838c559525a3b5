"""What the ClawBot channel keeps on disk, in `state_dir` (all JSON, written atomically, mode 600).

* `credentials.json`: `{bot_token, baseurl, ilink_bot_id, ilink_user_id, saved_at}`, written by
  `xiaoai login clawbot`; the running adapter watches its signature to pick up a new login.
* `sync.json`: the long-poll cursor (`get_updates_buf`) and the recently seen inbound message ids, so a
  restart resumes where it stopped and a replayed batch is not handled twice.
* `contexts.json`: per user the latest `context_token`, when it arrived and how many sends it has
  paid for (the platform allows 10 sends per inbound message, within 24 h).
* `sent.json`: per job id which parts of a video delivery went out (video item, caption chunks), so a
  retry never sends the same video twice.

Cursor, seen ids and context tokens belong to one bot id; when a login for another bot id appears
they are dropped. Secrets (bot token, context tokens) never appear in a repr or a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
SYNC_FILE = "sync.json"
CONTEXTS_FILE = "contexts.json"
SENT_FILE = "sent.json"
MAX_SENT_RECORDS = 2000


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` to a temp file (mode 600) in the same folder, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (logged, never raised)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path.name, type(exc).__name__)
        return None
    try:
        return json.loads(text)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", path.name)
        return None


@dataclass(frozen=True, slots=True)
class Credentials:
    bot_token: str = field(repr=False)
    baseurl: str = ""
    ilink_bot_id: str = ""
    ilink_user_id: str = ""
    saved_at: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> Credentials | None:
        if not isinstance(data, dict):
            return None
        token = data.get("bot_token")
        if not isinstance(token, str) or not token.strip():
            return None
        return cls(bot_token=token.strip(), baseurl=str(data.get("baseurl") or ""),
                   ilink_bot_id=str(data.get("ilink_bot_id") or ""),
                   ilink_user_id=str(data.get("ilink_user_id") or ""),
                   saved_at=float(data.get("saved_at") or 0.0))  # fmt: skip


@dataclass(slots=True)
class ContextRecord:
    """The reply context of one user: their latest inbound message's token and what it has paid for."""

    token: str = field(repr=False)
    received_at: float
    message_id: str = ""
    sends: int = 0
    stale: bool = False  # the server refused it (ret −2): useless until the user writes again


class ClawbotState:
    """Loads and saves the files above; all methods are synchronous and cheap (small JSON files)."""

    def __init__(self, state_dir: Path, *, max_seen: int = 5000, seen_ttl_s: float = 8 * 3600.0) -> None:
        self.dir = Path(state_dir)
        self._max_seen = max_seen
        self._seen_ttl_s = seen_ttl_s
        self.bot_id = ""
        self.cursor = ""
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._contexts: dict[str, ContextRecord] = {}
        self._sent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __repr__(self) -> str:
        return f"ClawbotState({self.dir}, bot_id={self.bot_id!r}, seen={len(self._seen)}, users={len(self._contexts)})"

    # ------------------------------------------------------------------ credentials
    @property
    def credentials_path(self) -> Path:
        return self.dir / CREDENTIALS_FILE

    def load_credentials(self) -> Credentials | None:
        return Credentials.from_json(read_json(self.credentials_path))

    def save_credentials(self, creds: Credentials) -> None:
        write_json_atomic(self.credentials_path, asdict(creds))

    def credentials_signature(self) -> tuple[int, int, int] | None:
        """(inode, mtime ns, size): changes whenever login rewrites the file (atomic rename)."""
        try:
            st = self.credentials_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # ------------------------------------------------------------------ loading
    def load(self, bot_id: str) -> None:
        """Load cursor, seen ids, contexts and sent records; drop those of another bot id."""
        self.bot_id = bot_id
        sync = read_json(self.dir / SYNC_FILE)
        self.cursor, self._seen = "", OrderedDict()
        if isinstance(sync, dict) and sync.get("bot_id", "") == bot_id:
            self.cursor = str(sync.get("get_updates_buf") or "")
            for item in sync.get("seen") or []:
                if isinstance(item, list) and len(item) == 2:
                    self._seen[str(item[0])] = float(item[1])
        elif sync is not None:
            log.info("sync state belongs to another bot id; starting with an empty cursor")
        contexts = read_json(self.dir / CONTEXTS_FILE)
        self._contexts = {}
        if isinstance(contexts, dict) and contexts.get("bot_id", "") == bot_id:
            for user, raw in (contexts.get("users") or {}).items():
                if isinstance(raw, dict) and isinstance(raw.get("token"), str):
                    self._contexts[str(user)] = ContextRecord(
                        token=raw["token"], received_at=float(raw.get("received_at") or 0.0),
                        message_id=str(raw.get("message_id") or ""), sends=int(raw.get("sends") or 0),
                        stale=bool(raw.get("stale")))  # fmt: skip
        sent = read_json(self.dir / SENT_FILE)
        self._sent = OrderedDict()
        if isinstance(sent, dict):
            for job_id, record in (sent.get("jobs") or {}).items():
                if isinstance(record, dict):
                    self._sent[str(job_id)] = record

    # ------------------------------------------------------------------ cursor + seen ids
    def is_seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def mark_seen(self, message_id: str, now: float) -> None:
        self._seen[message_id] = now
        self._seen.move_to_end(message_id)
        horizon = now - self._seen_ttl_s
        while self._seen and (len(self._seen) > self._max_seen or next(iter(self._seen.values())) < horizon):
            self._seen.popitem(last=False)

    def save_sync(self) -> None:
        write_json_atomic(self.dir / SYNC_FILE, {
            "bot_id": self.bot_id,
            "get_updates_buf": self.cursor,
            "seen": [[mid, ts] for mid, ts in self._seen.items()],
        })  # fmt: skip

    # ------------------------------------------------------------------ context tokens
    def context(self, user_id: str) -> ContextRecord | None:
        return self._contexts.get(user_id)

    def set_context(self, user_id: str, token: str, received_at: float, message_id: str) -> None:
        self._contexts[user_id] = ContextRecord(token=token, received_at=received_at, message_id=message_id)
        self.save_contexts()

    def record_send(self, user_id: str) -> None:
        record = self._contexts.get(user_id)
        if record is not None:
            record.sends += 1
            self.save_contexts()

    def mark_stale(self, user_id: str) -> None:
        record = self._contexts.get(user_id)
        if record is not None and not record.stale:
            record.stale = True
            self.save_contexts()

    def save_contexts(self) -> None:
        users = {user: asdict(record) for user, record in self._contexts.items()}
        write_json_atomic(self.dir / CONTEXTS_FILE, {"bot_id": self.bot_id, "users": users})

    # ------------------------------------------------------------------ sent records
    def sent_record(self, job_id: str) -> dict[str, Any]:
        return dict(self._sent.get(job_id) or {})

    def update_sent(self, job_id: str, now: float, **fields: Any) -> None:
        record = self._sent.pop(job_id, {})
        record.update(fields)
        record["at"] = now
        self._sent[job_id] = record
        while len(self._sent) > MAX_SENT_RECORDS:
            self._sent.popitem(last=False)
        write_json_atomic(self.dir / SENT_FILE, {"jobs": dict(self._sent)})
