"""Job records shared by the bot (submit, cancel, deliver) and the worker process (claim, run, finish).

State machine (every arrow is one `BEGIN IMMEDIATE` transaction in `JobQueue`):

    queued ──claim──▶ running ──complete──▶ succeeded ──mark_delivered──▶ delivered
      │  ▲              │ │ └──fail(retryable, attempts left) / lease expired──▶ queued
      │  └──────────────┘ ├──fail(final) / lease expired, no attempts left──▶ failed (+refund)
      └─cancel (+refund)─▶ cancelled ◀──finish_cancelled (+refund)──┘
    succeeded ──delivery gave up (+refund)──▶ failed
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Literal


class JobState(StrEnum):
    QUEUED = "queued"  #: waiting for the worker, units already spent
    RUNNING = "running"  #: claimed by a worker holding a lease
    SUCCEEDED = "succeeded"  #: MP4 written, not yet sent to the chat
    FAILED = "failed"  #: gave up; units refunded
    CANCELLED = "cancelled"  #: cancelled by the user; units refunded
    DELIVERED = "delivered"  #: MP4 sent to the chat


PENDING_STATES = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the video plugin submits."""

    message_id: str
    user_id: str
    user_name: str
    chat_id: str
    chat_kind: str  # bot.messages.ChatKind value: "group" | "private"
    group_id: str | None
    prompt: str  # what the user typed
    final_prompt: str  # what the model gets (after translation / enhancement)
    resolution: str
    duration_s: int
    seed: int
    image_path: str | None
    cost: int
    model: str = ""  # `Settings.model_key()`: timings (ETA) are kept per model
    negative_prompt: str = ""  # what the generator must avoid ('' = the generator's own default)
    parent_id: int | None = None  # `/续写 #N`: the job whose last frame this one starts from
    merge: bool = False  # `/续写 #N 合并`: join the parent's clip and this one into one MP4


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    message_id: str
    user_id: str
    user_name: str
    chat_id: str
    chat_kind: str
    group_id: str | None
    prompt: str
    final_prompt: str
    resolution: str
    duration_s: int
    seed: int
    image_path: str | None
    cost: int
    state: JobState
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_until: float | None
    progress: float
    progress_text: str
    cancel_requested: bool
    error: str | None  # user-facing (Chinese) reason of the last failure
    video_path: str | None
    cover_path: str | None
    label: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    delivered_at: float | None
    notified: bool  # failure / cancel already told to the user
    # additions beyond the contract
    seconds: float | None = None  # generation time reported by the worker
    delivery_attempts: int = 0
    next_delivery_at: float | None = None
    delivery_error: str | None = None
    deferred_at: float | None = None  # parked until the user writes again (the channel allowed no send)
    send_started_at: float | None = None  # the last video send began here (recorded before sending)
    model: str = ""  # which model makes it (`Settings.model_key()`; '' for jobs of older versions)
    negative_prompt: str = ""  # '' = the generator's own default (and every job of older versions)
    parent_id: int | None = None  # `/续写`: the job this one continues
    merge: bool = False  # `/续写 … 合并`: the result is the parent's clip followed by this one

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        values["state"] = JobState(values["state"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["notified"] = bool(values["notified"])
        if "merge" in values:
            values["merge"] = bool(values["merge"])
        if values.get("negative_prompt") is None:
            values.pop("negative_prompt", None)
        return cls(**values)

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES


SubmitStatus = Literal["queued", "duplicate", "no_quota", "too_many_pending", "banned"]


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    status: SubmitStatus
    job: Job | None  # the new job, or the existing one for a duplicate (None if that message made no job)
    position: int | None  # 1-based place in the fair order, running jobs included (1 = runs next/now)
    eta_s: float | None  # estimated seconds until this job is finished
    balance: int  # units left after this submit
    cost: int = 0
    pending: int = 0  # the user's queued+running jobs after this submit
    eta_measured: bool = False  # the ETA rests on timings measured here (not on `queue.eta_defaults_s`)
