"""The durable fair job queue: records (`models`), fair order (`fairness`), the queue (`queue`), settings."""

from bot.jobs.models import Job, JobSpec, JobState, SubmitOutcome
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings, WorkerSettings

__all__ = ["Job", "JobQueue", "JobSpec", "JobState", "QueueSettings", "SubmitOutcome", "WorkerSettings"]
