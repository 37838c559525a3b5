"""The admin dashboard: queue, recent jobs, quotas + audit, worker status, daily counts, admin actions.

Access needs the token from the environment (`XIAOAI_DASHBOARD_TOKEN`): sent as
`Authorization: Bearer <token>`, or once through `/dashboard?token=…` or the login form, which sets an
HttpOnly SameSite=Strict session cookie (an HMAC of the token, not the token) and redirects. Without
it: 401; with a wrong one: 403. State-changing requests also need a JSON body and, when the browser
sends one, a same-origin `Origin` header.

It runs beside the playground (`bot.web.server`) and in the admin console of `xiaoai run` (`bot.web.admin`),
where `deps.channel` is the `ChannelHub` of every chat channel: playground members are then simply absent and
the channel list (`channel_status`) shows each channel's connection, last message, login need and last error.

Admin actions use the very calls the chat admin commands make (`plugins.quota`, `plugins.video`):
`QuotaBook.set_balance / add / reset_user / ban / unban` (each writes its ledger row and audit row),
`Permissions.is_admin` for "admins cannot be banned", and `JobQueue.cancel` for cancelling (the same
state change and refund as the chat's `/取消`, for any pending job by id; the audit row is written in the
same transaction). The actor recorded in the audit is `DASHBOARD_ACTOR`.

  GET  /dashboard                      the page (static HTML/JS, inline-SVG chart)
  POST /dashboard/login                form field `token`
  GET  /api/dashboard/state            everything the page shows, as JSON
  GET  /api/dashboard/events           server-sent `state` events whenever it changes
  GET  /api/dashboard/ledger/<user>    one user's ledger rows
  POST /api/dashboard/quota            {"user_id", "op": "set"|"add"|"reset", "value", "reason"}
  POST /api/dashboard/ban              {"user_id", "banned": true|false, "reason"}
  POST /api/dashboard/cancel           {"job_id", "reason"}
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import html
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime, timedelta
from importlib import util as importlib_util
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.jobs.models import PENDING_STATES, Job, JobState
from bot.messages import OutgoingText
from bot.permissions import Permissions
from bot.store.audit_text import audit_text
from bot.web.common import STATIC_DIR, same_origin, sse

log = logging.getLogger(__name__)

DASHBOARD_ACTOR = "dashboard"
COOKIE = "xiaoai_dashboard"
_USER_ID = re.compile(r"^[^\s]{1,128}$")
DAYS = 14
RECENT = 40
MAX_REASON_CHARS = 200
MAX_QUOTA = 100_000  # a typo'd 1000000 is refused, not granted


# ------------------------------------------------------------------------------------------ auth
def session_value(token: str) -> str:
    return hmac.new(token.encode("utf-8"), b"xiaoai-dashboard-session", hashlib.sha256).hexdigest()


def check_token(request: Request) -> tuple[bool, int]:
    """(allowed, status when refused): 401 without credentials, 403 with wrong ones or no token set."""
    token: str | None = request.app.state.dashboard_token
    if not token:
        return False, 403
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return hmac.compare_digest(auth[7:].strip().encode(), token.encode()), 403
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return hmac.compare_digest(cookie.encode(), session_value(token).encode()), 403
    return False, 401


def _refuse_json(status: int) -> JSONResponse:
    text = "需要管理令牌 / dashboard token required" if status == 401 else "令牌无效 / invalid dashboard token"
    return JSONResponse({"ok": False, "error": text}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _login_page(status: int, note: str) -> HTMLResponse:
    body = f"""<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>小爱视频 · 管理后台</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml"></head><body class="login">
<form method="post" action="/dashboard/login" class="login-box" id="login-form">
<h1>小爱视频 · 管理后台</h1><p class="muted">{html.escape(note)}</p>
<input type="password" name="token" placeholder="XIAOAI_DASHBOARD_TOKEN" autocomplete="off" required>
<button type="submit">进入 / Open</button></form></body></html>"""
    return HTMLResponse(body, status_code=status)


# ------------------------------------------------------------------------------------------ data
def _job_json(job: Job, deps: Any, *, place: bool = False) -> dict[str, Any]:
    duration = job.seconds
    if duration is None and job.started_at and job.finished_at:
        duration = job.finished_at - job.started_at
    data: dict[str, Any] = {
        "id": job.id, "user_id": job.user_id, "user_name": job.user_name, "chat_id": job.chat_id,
        "prompt": job.prompt, "final_prompt": job.final_prompt, "resolution": job.resolution,
        "duration_s": job.duration_s, "seed": job.seed, "cost": job.cost, "state": str(job.state),
        "progress": round(float(job.progress or 0.0), 3), "progress_text": job.progress_text,
        "attempts": job.attempts, "cancel_requested": job.cancel_requested, "error": job.error,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "seconds": None if duration is None else round(float(duration), 1), "image": bool(job.image_path),
        "label": job.label,
        "video_url": f"/media/video/{job.id}" if job.state in (JobState.SUCCEEDED, JobState.DELIVERED)
        and job.video_path else None,
    }
    if place:
        position, eta = deps.queue.place(job.id)
        data["position"] = position
        data["eta_s"] = None if eta is None else round(eta)
    return data


def cancellable_job_ids(deps: Any, jobs: list[Job]) -> set[int]:
    """The jobs an admin can cancel: every pending one not already stopping (`JobQueue.cancel`)."""
    return {job.id for job in jobs if job.state in PENDING_STATES and not job.cancel_requested}


def _members(deps: Any) -> list[Any]:
    """The playground's simulated members when the dashboard runs beside the playground; none on a real bot
    (`xiaoai run`: the dashboard's channel is the hub of every chat channel)."""
    return list(getattr(getattr(deps.channel, "settings", None), "users", None) or [])


def channel_status(deps: Any) -> list[dict[str, Any]]:
    """Each chat channel: connected, when it last heard a message, whether it waits for a login, its last
    error (adapters that keep one) or why it could not start."""
    hub = getattr(deps, "hub", None)
    channels = list(hub.channels) if hub is not None else [deps.channel]
    failures: dict[str, str] = getattr(hub, "failures", {}) or {}
    events: dict[str, float] = getattr(hub, "last_event", {}) or {}
    out = []
    for channel in channels:
        failure = failures.get(channel.name)
        paused = bool(getattr(channel, "paused", False))
        last_error = getattr(channel, "last_error", None) or getattr(getattr(channel, "gateway", None),
                                                                     "last_error", None)
        try:
            connected = failure is None and bool(channel.connected)
        except Exception:  # a status read must never break the page
            connected = False
        out.append({
            "name": channel.name, "connected": connected, "started": failure is None, "failure": failure,
            "paused": paused, "login_needed": paused or (failure is not None and "xiaoai login" in failure),
            "last_error": None if last_error is None else str(last_error)[:300], "last_event": events.get(channel.name),
        })
    return out


def _users(deps: Any) -> list[dict[str, Any]]:
    rows = deps.quota.users()
    names = deps.queue.latest_user_names()
    members = _members(deps)
    playground = {u.id: u.name for u in members}
    admins = Permissions(deps.settings.bot.admins)
    now = deps.clock()
    out = []
    for user_id, group_id, first_seen, last_seen in rows:
        out.append({
            "user_id": user_id, "name": playground.get(user_id) or names.get(user_id) or "",
            "group_id": group_id, "balance": deps.quota.balance(user_id),
            "allowance": deps.quota.allowance(user_id), "spent_today": max(0, deps.quota.spent_today(user_id, now)),
            "banned": deps.quota.is_banned(user_id), "admin": admins.is_admin(user_id),
            "first_seen": first_seen, "last_seen": last_seen, "seen": True,
        })
    known = {row[0] for row in rows}
    for user in members:  # playground members who have not spoken yet
        if user.id not in known:
            out.append({
                "user_id": user.id, "name": user.name, "group_id": None, "balance": None,
                "allowance": deps.quota.allowance(user.id, deps.channel.settings.room_id), "spent_today": 0,
                "banned": deps.quota.is_banned(user.id), "admin": admins.is_admin(user.id),
                "first_seen": None, "last_seen": None, "seen": False,
            })
    return out


def _daily(deps: Any) -> list[dict[str, Any]]:
    tz = ZoneInfo(deps.settings.quota.timezone)
    today = datetime.fromtimestamp(deps.clock(), tz).date()
    days = [today - timedelta(days=i) for i in range(DAYS - 1, -1, -1)]
    start = datetime.combine(days[0], datetime.min.time(), tz).timestamp()
    rows = deps.queue.created_since(start)
    table = {d.isoformat(): {"day": d.isoformat(), "ok": 0, "failed": 0, "cancelled": 0, "pending": 0} for d in days}
    group = {"succeeded": "ok", "delivered": "ok", "failed": "failed", "cancelled": "cancelled",
             "queued": "pending", "running": "pending"}
    for created_at, state in rows:
        key = datetime.fromtimestamp(created_at, tz).date().isoformat()
        if key in table:
            table[key][group.get(state, "pending")] += 1
    return list(table.values())


@functools.cache
def _cuda_present() -> bool:
    """What `torch.cuda.is_available()` would say, without importing torch here (seconds, memory) unless
    this process already did: torch built with CUDA (its version file) and an NVIDIA device node."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:  # a status read must never break the page
            return False
    try:
        spec = importlib_util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        version = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    except OSError:
        return False
    built_with_cuda = re.search(r"^cuda\b.*=\s*['\"]\d", version, re.M) is not None
    return built_with_cuda and (Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*")))


def generation_device(settings: Any) -> tuple[str, str]:
    """(kind, label) of where the local worker generates: kind "cpu" or "cuda"; the label is what the page
    shows (a CPU run is never called GPU)."""
    if settings.worker.generator == "synthetic":
        return "cpu", "CPU（合成测试视频，不用显卡）"
    device = str(settings.generation.device or "auto")
    if device == "auto":
        device = "cuda" if _cuda_present() else "cpu"
    if device.startswith("cuda"):
        return "cuda", f"GPU（{device}）"
    return "cpu", "CPU" if device == "cpu" else device


def _worker(deps: Any) -> dict[str, Any]:
    s = deps.settings
    device_kind, device_label = generation_device(s)
    info: dict[str, Any] = {
        "generator": s.worker.generator, "device": s.generation.device, "device_kind": device_kind,
        "device_label": device_label,
        "checkpoint": str(s.generation.checkpoint) if s.generation.checkpoint else None,
        "executor": None, "process_alive": None, "actors": [], "gpus": [],
    }
    executor = deps.executor
    if executor is not None:
        try:
            view = executor.view()
            info["executor"] = view.kind
            info["process_alive"] = view.process_alive
            info["actors"] = [{**asdict(a), "mean_s": a.mean_s,
                               "device_label": device_label if view.kind == "local"
                               else (f"GPU {a.gpu}" if a.gpu else "无 GPU")} for a in view.actors]
            if view.cluster is not None:
                info["cluster"] = asdict(view.cluster)
        except Exception as exc:  # a status read must never break the page
            info["error"] = f"{type(exc).__name__}: {exc}"
    torch = sys.modules.get("torch")  # only if this process already loaded it: never import it here
    if torch is not None:
        try:
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    info["gpus"].append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
        except Exception as exc:  # a status read must never break the page
            log.debug("GPU list unavailable: %s", exc)
    return info


def _audit_phrase(row: Any) -> str:
    """The audit row as the chat's /审计 words it (the detail may be stored as JSON text)."""
    detail = row.detail
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except ValueError:
            return detail
    return audit_text(row.action, row.target_id or "", detail if isinstance(detail, dict) else {})


def dashboard_state(deps: Any) -> dict[str, Any]:
    snapshot: list[Job] = deps.queue.snapshot()
    cancellable = cancellable_job_ids(deps, snapshot)
    running = [_job_json(j, deps, place=True) for j in snapshot if j.state is JobState.RUNNING]
    waiting = [_job_json(j, deps, place=True) for j in snapshot if j.state is JobState.QUEUED]
    for item in (*running, *waiting):
        item["cancellable"] = item["id"] in cancellable
    recent_jobs = deps.queue.recent(RECENT)
    audit = [{"id": a.id, "actor_id": a.actor_id, "action": a.action, "target_id": a.target_id, "detail": a.detail,
              "text": _audit_phrase(a), "ts": a.ts} for a in deps.quota.audit_log(30)]
    return {
        "now": deps.clock(), "timezone": deps.settings.quota.timezone,
        "counts": deps.queue.counts(),
        "running": running, "waiting": waiting,
        "recent": [_job_json(j, deps) for j in recent_jobs],
        "users": _users(deps), "audit": audit, "worker": _worker(deps), "daily": _daily(deps),
        "channels": channel_status(deps),
        "quota": {"daily": deps.settings.quota.daily, "costs": deps.settings.quota.costs},
    }


# ------------------------------------------------------------------------------------------ routes
async def dashboard_page(request: Request) -> Response:
    token: str | None = request.app.state.dashboard_token
    if not token:
        return _login_page(403, "管理后台未启用：请设置环境变量 XIAOAI_DASHBOARD_TOKEN。")
    supplied = request.query_params.get("token")
    if supplied is not None:
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            log.warning("dashboard: wrong token from %s", request.client.host if request.client else "?")
            return _login_page(403, "令牌无效 / invalid token")
        return _with_session(RedirectResponse("/dashboard", status_code=303), token)
    ok, status = check_token(request)
    if not ok:
        return _login_page(status, "请输入管理令牌（环境变量 XIAOAI_DASHBOARD_TOKEN）。")
    return HTMLResponse((STATIC_DIR / "dashboard.html").read_text(encoding="utf-8"),
                        headers={"Cache-Control": "no-store"})


async def dashboard_login(request: Request) -> Response:
    token: str | None = request.app.state.dashboard_token
    if not token:
        return _login_page(403, "管理后台未启用：请设置环境变量 XIAOAI_DASHBOARD_TOKEN。")
    form = await request.form(max_files=0, max_fields=2)
    supplied = str(form.get("token") or "").strip()
    if not supplied:
        return _login_page(400, "请输入管理令牌（环境变量 XIAOAI_DASHBOARD_TOKEN 的值）。")
    if not hmac.compare_digest(supplied.encode(), token.encode()):
        log.warning("dashboard: wrong token at login from %s", request.client.host if request.client else "?")
        return _login_page(403, "令牌无效 / invalid token")
    return _with_session(RedirectResponse("/dashboard", status_code=303), token)


def _with_session(response: Response, token: str) -> Response:
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
    return response


def _guard(request: Request) -> JSONResponse | None:
    ok, status = check_token(request)
    if not ok:
        return _refuse_json(status)
    return None


async def _admin_body(request: Request) -> dict[str, Any] | JSONResponse:
    """An admin action's JSON body, or the refusal (no/wrong token, cross-origin, not a JSON object)."""
    if (refused := _guard(request)) is not None:
        return refused
    return await _json_body(request)


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    if not same_origin(request):
        return JSONResponse({"ok": False, "error": "cross-origin request refused"}, status_code=403)
    if not request.headers.get("content-type", "").startswith("application/json"):
        return JSONResponse({"ok": False, "error": "需要 JSON 请求体"}, status_code=415)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return JSONResponse({"ok": False, "error": "JSON 无效"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"ok": False, "error": "JSON 需要是对象"}, status_code=400)
    return body


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def _target(body: dict[str, Any]) -> str | None:
    user_id = body.get("user_id")
    return user_id if isinstance(user_id, str) and _USER_ID.match(user_id) else None


def _known_user(deps: Any, user_id: str) -> bool:
    """A user the dashboard lists: one the bot has seen, or a playground member."""
    lookup = getattr(deps.channel, "user", None)  # playground members (the hub of `xiaoai run` has none)
    if lookup is not None and lookup(user_id) is not None:
        return True
    return any(row[0] == user_id for row in deps.quota.users())


def _reason(body: dict[str, Any]) -> str | JSONResponse:
    reason = body.get("reason")
    if reason is None:
        return ""
    if not isinstance(reason, str):
        return _bad("原因需要是文字。")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        return _bad(f"原因太长了，最多 {MAX_REASON_CHARS} 字。")
    return reason


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,9}", value.strip()):
        return int(value)
    return None


async def api_state(request: Request) -> Response:
    if (refused := _guard(request)) is not None:
        return refused
    return JSONResponse(dashboard_state(request.app.state.deps), headers={"Cache-Control": "no-store"})


async def api_events(request: Request) -> Response:
    if (refused := _guard(request)) is not None:
        return refused
    deps = request.app.state.deps

    async def stream() -> AsyncIterator[bytes]:
        last = ""
        idle = 0.0
        yield b"retry: 1000\n\n"
        while True:
            try:
                state = dashboard_state(deps)
            except Exception:
                log.exception("dashboard state failed")
                state = None
            if state is not None:
                state.pop("now", None)
                text = json.dumps(state, ensure_ascii=False, sort_keys=True, default=str)
                if text != last:
                    last = text
                    state["now"] = deps.clock()
                    idle = 0.0
                    yield sse("state", state)
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(1.0)
            idle += 1.0

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# Environment variables whose values are secrets: the console says whether each is set, never its value.
_SECRET_ENV = ("WECHATY_PUPPET_SERVICE_TOKEN", "XIAOAI_DASHBOARD_TOKEN", "XIAOAI_WECOM_SECRET", "XIAOAI_QQ_SECRET",
               "XIAOAI_TRANSLATE_API_KEY", "XIAOAI_MODERATION_API_KEY", "HF_TOKEN")
_SECRETISH = re.compile(r"(token|secret|password|api_key)$", re.I)


def _masked(value: Any) -> Any:
    """The settings as JSON with any secret-looking key masked (none should be there: the loader refuses
    secrets in config.yaml; this is the second lock)."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRETISH.search(str(k)) and v else _masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def effective_settings(deps: Any) -> dict[str, Any]:
    """Read-only view for the console: the effective settings (file + environment overrides) and which
    secret variables are set."""
    return {"settings": _masked(deps.settings.model_dump(mode="json")),
            "secrets": {name: bool(os.environ.get(name)) for name in _SECRET_ENV}}


async def api_settings(request: Request) -> Response:
    if (refused := _guard(request)) is not None:
        return refused
    return JSONResponse(effective_settings(request.app.state.deps), headers={"Cache-Control": "no-store"})


async def api_ledger(request: Request) -> Response:
    if (refused := _guard(request)) is not None:
        return refused
    deps = request.app.state.deps
    user_id = request.path_params["user_id"]
    if not _USER_ID.match(user_id):
        return _bad("用户 ID 无效")
    rows = deps.quota.history(user_id, limit=100)
    return JSONResponse({"ok": True, "user_id": user_id, "balance": deps.quota.balance(user_id),
                         "rows": [asdict(r) for r in rows]})


async def api_quota(request: Request) -> Response:
    body = await _admin_body(request)
    if isinstance(body, JSONResponse):
        return body
    deps = request.app.state.deps
    quota = deps.quota
    target = _target(body)
    if target is None:
        return _bad("请先选择用户。")
    if not _known_user(deps, target):
        return _bad("没有这个用户。", 404)
    op = body.get("op")
    if op not in ("set", "add", "reset"):
        return _bad("op 需要是 set、add 或 reset")
    reason = _reason(body)
    if isinstance(reason, JSONResponse):
        return reason
    if op == "reset":
        balance = quota.reset_user(DASHBOARD_ACTOR, target)
        text = f"已把 {target} 的额度恢复为 {balance} 点。"
    else:  # set / add: an amount is required (an empty field is not 0)
        raw = body.get("value")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return _bad("请填写数量，例如 10。")
        value = _int(raw)
        if value is None:
            return _bad("数量需要是整数，例如 10。")
        if abs(value) > MAX_QUOTA:
            return _bad(f"数量太大了，最多 {MAX_QUOTA}。")
        if op == "add" and value == 0:
            return _bad("增加 0 点不会有变化，请填写非 0 的数量（负数为扣减）。")
        if op == "set":
            if value < 0:
                return _bad("额度不能设为负数。")
            balance = quota.set_balance(DASHBOARD_ACTOR, target, value, reason=reason)
            text = f"已把 {target} 的额度设为 {balance} 点。"
        else:
            balance = quota.add(DASHBOARD_ACTOR, target, value, reason=reason)
            text = f"已为 {target} 调整 {value:+d} 点，当前 {balance} 点。"
    log.info("dashboard quota %s %s -> %s", op, target, balance, extra={"actor_id": DASHBOARD_ACTOR, "user_id": target})
    return JSONResponse({"ok": True, "user_id": target, "balance": balance, "message": text})


async def api_ban(request: Request) -> Response:
    body = await _admin_body(request)
    if isinstance(body, JSONResponse):
        return body
    deps = request.app.state.deps
    target = _target(body)
    if target is None:
        return _bad("请先选择用户。")
    if not _known_user(deps, target):
        return _bad("没有这个用户。", 404)
    banned = body.get("banned")  # required: a request that forgot it must not ban anybody
    if not isinstance(banned, bool):
        return _bad("banned 需要是 true 或 false")
    reason = _reason(body)
    if isinstance(reason, JSONResponse):
        return reason
    if banned:
        if Permissions(deps.settings.bot.admins).is_admin(target):
            return _bad("不能封禁管理员。")
        deps.quota.ban(DASHBOARD_ACTOR, target, reason=reason)
        text = f"已暂停 {target} 使用视频生成。"
    else:
        deps.quota.unban(DASHBOARD_ACTOR, target)
        text = f"已恢复 {target} 使用视频生成。"
    log.info("dashboard %s %s", "ban" if banned else "unban", target,
             extra={"actor_id": DASHBOARD_ACTOR, "user_id": target})
    return JSONResponse({"ok": True, "user_id": target, "banned": banned, "message": text})


async def api_cancel(request: Request) -> Response:
    body = await _admin_body(request)
    if isinstance(body, JSONResponse):
        return body
    deps = request.app.state.deps
    job_id = _int(body.get("job_id"))
    if job_id is None or job_id <= 0:
        return _bad("job_id 无效")
    reason = _reason(body)
    if isinstance(reason, JSONResponse):
        return reason
    job: Job | None = deps.queue.get(job_id)
    if job is None:
        return _bad("没有这个任务。", 404)
    if not job.is_pending or job.cancel_requested:
        return _bad(f"任务 #{job_id} 已经结束或正在停止。", 409)
    done = deps.queue.cancel(job_id, actor=DASHBOARD_ACTOR, reason=reason)  # with its audit row
    if done is None:
        return _bad(f"任务 #{job_id} 已经结束或正在停止。", 409)
    if done.state is JobState.CANCELLED:  # was queued: refunded now; the chat hears it from us
        text = f"管理员取消了您的任务 #{job_id}，额度已退还（{job.cost} 点）。"
        mentions = (job.user_id,) if job.chat_kind == "group" else ()
        if mentions:
            text = f"@{job.user_name or job.user_id} {text}"
        try:
            await deps.channel.send_text(OutgoingText(chat_id=job.chat_id, text=text, mention_ids=mentions))
        except Exception:
            log.exception("could not tell the chat about cancelled job %s", job_id, extra={"job_id": job_id})
        message = f"已取消任务 #{job_id}，额度已退还（{job.cost} 点）。"
    else:  # running: the worker stops at its next step; the delivery loop tells the user
        message = f"任务 #{job_id} 正在生成，将在下一步停止，额度会退还。"
    log.info("dashboard cancel job=%s was=%s", job_id, job.state,
             extra={"actor_id": DASHBOARD_ACTOR, "job_id": job_id, "user_id": job.user_id})
    return JSONResponse({"ok": True, "job_id": job_id, "state": str(done.state), "message": message})


def dashboard_routes() -> list[Route]:
    return [
        Route("/dashboard", dashboard_page),
        Route("/dashboard/login", dashboard_login, methods=["POST"]),
        Route("/api/dashboard/state", api_state),
        Route("/api/dashboard/events", api_events),
        Route("/api/dashboard/ledger/{user_id:str}", api_ledger),
        Route("/api/dashboard/settings", api_settings),
        Route("/api/dashboard/quota", api_quota, methods=["POST"]),
        Route("/api/dashboard/ban", api_ban, methods=["POST"]),
        Route("/api/dashboard/cancel", api_cancel, methods=["POST"]),
    ]
