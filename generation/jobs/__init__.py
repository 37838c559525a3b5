"""The durable fair job queue: records (`models`), fair order (`fairness`), the queue (`queue`), settings."""

from generation.jobs.models import Job, JobSpec, JobState, SubmitOutcome
from generation.jobs.queue import JobQueue
from generation.jobs.settings import QueueSettings, WorkerSettings

__all__ = ["Job", "JobQueue", "JobSpec", "JobState", "QueueSettings", "SubmitOutcome", "WorkerSettings"]
