"""Settings sections for the job queue (fairness, limits, ETA, delivery retries) and the worker process."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def _default_eta() -> dict[str, float]:
    # seconds per "resolution/duration" (a real checkpoint) before any job has finished on this machine;
    # "model" or "model:resolution/duration" keys (model = `Settings.model_key()`) take precedence
    return {"384p/5": 180.0, "384p/10": 360.0, "768p/5": 600.0, "768p/10": 1200.0, **MODEL_ETA_DEFAULTS}


# The demo generators take seconds, not minutes (the tiny random-weight model measured on a laptop CPU).
MODEL_ETA_DEFAULTS: dict[str, float] = {
    "synthetic": 3.0, "tiny:384p/5": 10.0, "tiny:768p/5": 20.0, "tiny:768p/10": 60.0,
}


class QueueSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_pending_per_user: int = Field(default=3, ge=1)  # queued + running jobs one user may have
    max_attempts: int = Field(default=2, ge=1)  # runs per job before it fails (and is refunded)
    eta_defaults_s: dict[str, float] = Field(default_factory=_default_eta)
    eta_fallback_s: float = Field(default=300.0, gt=0)  # for a resolution/duration not listed above
    eta_history: int = Field(default=20, ge=1)  # recent finished jobs the median is taken over
    delivery_poll_s: float = Field(default=2.0, gt=0)  # how often the delivery loop looks for work
    delivery_max_attempts: int = Field(default=5, ge=1)  # certain send failures before giving up
    delivery_backoff_s: float = Field(default=5.0, ge=0)  # first retry delay, doubled each time
    delivery_backoff_max_s: float = Field(default=300.0, ge=0)
    # Handled message ids are remembered this long (re-deliveries after a restart come within minutes;
    # a week is a wide margin) and then pruned, so the table stays bounded.
    seen_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: Literal["pyramid_flow", "synthetic"] = "pyramid_flow"
    output_dir: Path = Path("var/outputs")  # each job writes into output_dir/<job_id>/
    lease_s: float = Field(default=60.0, gt=0)  # a job whose lease runs out is recovered
    heartbeat_s: float = Field(default=10.0, gt=0)  # lease renewal period (keep well below lease_s)
    progress_every_s: float = Field(default=1.0, ge=0)  # progress rows are throttled to this
    poll_s: float = Field(default=0.5, gt=0)  # idle wait between claims
    max_job_s: float = Field(default=3600.0, gt=0)  # a job running longer stops being renewed
    recover_every_s: float = Field(default=15.0, gt=0)  # supervisor: expired-lease sweep period
    restart_backoff_s: float = Field(default=1.0, ge=0)  # supervisor: first restart delay, doubled
    restart_backoff_max_s: float = Field(default=60.0, ge=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)  # graceful stop before the process is killed
    # synthetic generator (tests, demo without a model)
    synthetic_steps: int = Field(default=10, ge=1)
    synthetic_step_delay_s: float = Field(default=0.05, ge=0)
    synthetic_fps: int = Field(default=8, ge=1)
    synthetic_width: int = Field(default=320, ge=16)
    synthetic_height: int = Field(default=192, ge=16)


class RetentionSettings(BaseModel):
    """Section `retention:` — what old data is removed, daily (`bot.jobs.retention`). Ledger and audit rows are
    kept forever; nothing a queued, running, not yet delivered or parked job needs is ever removed."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    keep_days: int = Field(default=30, ge=1)  # videos, covers, received images, finished job rows older than this
    run_at: str = Field(default="04:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # daily, local time (quota.timezone)
