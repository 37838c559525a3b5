"""In-process bookkeeping of the QQ channel: passive-reply windows, inbound de-duplication, image
references and the per-job "video already posted" record.

Passive replies: the platform accepts a reply that quotes a user's message id (`msg_id`) only for a
while after that message (`passive_window_s`) and only a few times (`passive_replies_per_msg`), and each
reply to the same msg_id needs a new `msg_seq`. `ReplyBook` remembers, per chat, the latest inbound
msg_id and its arrival time, and per msg_id how many replies were used and the next msg_seq. A
`reserve()` picks the message being answered when it is still fresh, else the chat's latest fresh
message, else None (a proactive send). Everything here is lost on restart on purpose: after a restart
the old msg_ids are treated as stale, which at worst costs a proactive send or a deferral.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Inbound:
    msg_id: str
    chat: str
    received_at: float
    used: int = 0
    next_seq: int = 1


@dataclass(frozen=True, slots=True)
class Reservation:
    """One passive reply slot: quote `msg_id` with `msg_seq`."""

    msg_id: str
    msg_seq: int


class ReplyBook:
    def __init__(
        self,
        *,
        window_s: float,
        per_msg: int,
        margin_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        max_messages: int = 5000,
    ) -> None:
        self._window = window_s
        self._per_msg = per_msg
        self._margin = min(margin_s, window_s / 2)
        self._clock = clock
        self._max = max_messages
        self._msgs: OrderedDict[str, _Inbound] = OrderedDict()
        self._latest: dict[str, str] = {}  # chat key -> latest inbound msg_id

    def record_inbound(self, chat: str, msg_id: str, at: float | None = None) -> None:
        """A user message arrived in `chat` (a scope-qualified key such as `group:<openid>`)."""
        if msg_id in self._msgs:
            return
        self._msgs[msg_id] = _Inbound(msg_id, chat, self._clock() if at is None else at)
        self._latest[chat] = msg_id
        while len(self._msgs) > self._max:
            old_id, old = self._msgs.popitem(last=False)
            if self._latest.get(old.chat) == old_id:
                del self._latest[old.chat]

    def latest(self, chat: str) -> str | None:
        return self._latest.get(chat)

    def _usable(self, entry: _Inbound | None, chat: str) -> bool:
        if entry is None or entry.chat != chat or entry.used >= self._per_msg:
            return False
        return self._clock() - entry.received_at < self._window - self._margin

    def reserve(self, chat: str, preferred: str | None = None) -> Reservation | None:
        """Take one passive slot: on `preferred` (the message being answered) when usable, else on the
        chat's latest message when usable; None when neither is (send proactively)."""
        for candidate in (preferred, self._latest.get(chat)):
            if candidate is None:
                continue
            entry = self._msgs.get(candidate)
            if self._usable(entry, chat):
                assert entry is not None
                entry.used += 1
                seq = entry.next_seq
                entry.next_seq += 1
                return Reservation(entry.msg_id, seq)
        return None

    def retire(self, msg_id: str) -> None:
        """The platform refused replies to `msg_id` (expired/used up): never offer it again."""
        entry = self._msgs.get(msg_id)
        if entry is not None:
            entry.used = self._per_msg

    def has_fresh(self, chat: str) -> bool:
        return self._usable(self._msgs.get(self._latest.get(chat, "")), chat)


class RecentIds:
    """Bounded set of recently seen ids with a time-to-live (inbound de-duplication)."""

    def __init__(self, *, max_ids: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._max = max_ids
        self._ttl = ttl_s
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen_before(self, *ids: str | None) -> bool:
        """True when any of `ids` was seen within the TTL; records all of them either way."""
        now = self._clock()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self._ttl and len(self._seen) <= self._max:
                break
            self._seen.popitem(last=False)
        hit = any(i is not None and i in self._seen for i in ids)
        for i in ids:
            if i:
                self._seen[i] = now
                self._seen.move_to_end(i)
        return hit


@dataclass(slots=True)
class _JobRecord:
    posting: bool = False  # the video post was started (intent), outcome not yet known
    video_posted: bool = False
    done: bool = False
    at: float = 0.0
    file_info: dict[str, tuple[str, float]] = field(default_factory=dict)  # memory only: target -> (info, expires)


class VideoLedger:
    """Per `job_id`: whether the video post was started, whether the video was posted (a retry then sends
    only the caption), whether everything was sent (a retry sends nothing), and the uploaded `file_info`
    per target while valid (a deferred send reuses it instead of uploading again).

    With a `path` the send states are kept in a small JSON file (written atomically on every change), so
    `was_sent()` can answer after a restart: True once posted, None when a post was started but its
    outcome never recorded (the bot died mid-send), False when no post was ever started."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time,
                 max_jobs: int = 2000) -> None:  # fmt: skip
        self._path = path
        self._clock = clock
        self._max = max_jobs
        self._jobs: OrderedDict[str, _JobRecord] = OrderedDict()
        self._load()

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            jobs = data.get("jobs", {}) if isinstance(data, dict) else {}
            for job_id, raw in jobs.items():
                if isinstance(raw, dict):
                    self._jobs[str(job_id)] = _JobRecord(posting=bool(raw.get("posting")),
                                                         video_posted=bool(raw.get("video_posted")),
                                                         done=bool(raw.get("done")), at=float(raw.get("at") or 0))  # fmt: skip
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("qq sent-video records at %s unreadable (%s); starting empty", self._path, exc)
            self._jobs.clear()

    def _save(self) -> None:
        if self._path is None:
            return
        jobs = {job_id: {"posting": r.posting, "video_posted": r.video_posted, "done": r.done, "at": r.at}
                for job_id, r in self._jobs.items() if r.posting or r.video_posted or r.done}  # fmt: skip
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"jobs": jobs}, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self._path)
        except OSError as exc:
            log.error("qq sent-video records could not be written to %s: %s", self._path, exc)

    def _get(self, job_id: str) -> _JobRecord:
        record = self._jobs.get(job_id)
        if record is None:
            record = self._jobs[job_id] = _JobRecord()
            while len(self._jobs) > self._max:
                self._jobs.popitem(last=False)
        return record

    def video_posted(self, job_id: str | None) -> bool:
        return bool(job_id) and job_id in self._jobs and self._jobs[job_id].video_posted

    def done(self, job_id: str | None) -> bool:
        return bool(job_id) and job_id in self._jobs and self._jobs[job_id].done

    def was_sent(self, job_id: str) -> bool | None:
        record = self._jobs.get(job_id)
        if record is None or not (record.posting or record.video_posted or record.done):
            return False
        if record.video_posted or record.done:
            return True
        return None

    def mark_posting(self, job_id: str | None) -> None:
        if job_id:
            record = self._get(job_id)
            record.posting, record.at = True, self._clock()
            self._save()

    def clear_posting(self, job_id: str | None) -> None:
        """The post certainly did not go out (refused, deferred)."""
        if job_id and job_id in self._jobs and self._jobs[job_id].posting:
            self._jobs[job_id].posting = False
            self._save()

    def mark_video_posted(self, job_id: str | None) -> None:
        if job_id:
            record = self._get(job_id)
            record.video_posted, record.posting, record.at = True, False, self._clock()
            self._save()

    def mark_done(self, job_id: str | None) -> None:
        if job_id:
            record = self._get(job_id)
            record.video_posted = record.done = True
            record.posting, record.at = False, self._clock()
            record.file_info.clear()
            self._save()

    def file_info(self, job_id: str | None, target: str) -> str | None:
        if not job_id or job_id not in self._jobs:
            return None
        cached = self._jobs[job_id].file_info.get(target)
        if cached is None or cached[1] <= self._clock():
            return None
        return cached[0]

    def forget_file_info(self, job_id: str | None, target: str) -> None:
        if job_id and job_id in self._jobs:
            self._jobs[job_id].file_info.pop(target, None)

    def remember_file_info(self, job_id: str | None, target: str, info: str, ttl_s: float) -> None:
        if job_id and ttl_s > 0:
            self._get(job_id).file_info[target] = (info, self._clock() + ttl_s)


class ImageRefs:
    """image_id -> attachment URL. The URL carries a signature, so the adapter keeps it in memory and never
    logs it (httpx's own INFO request log does show URLs; keep the `httpx` logger at WARNING in production)."""

    def __init__(self, max_refs: int = 2000) -> None:
        self._max = max_refs
        self._urls: OrderedDict[str, str] = OrderedDict()

    def add(self, image_id: str, url: str) -> None:
        self._urls[image_id] = url
        while len(self._urls) > self._max:
            self._urls.popitem(last=False)

    def get(self, image_id: str) -> str | None:
        return self._urls.get(image_id)
