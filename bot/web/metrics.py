"""`GET /metrics` of the admin console: Prometheus text format, one registry per app (never the global one).

Everything that lives in the database is read at scrape time by a custom collector (`XiaoaiCollector`), so
what the worker process (or a Ray actor) did counts as well as what the bot did, and a restart of the bot
does not reset those counters. Job rows that retention removed stay counted (`JobQueue.job_totals` adds
`job_rollup`), so no database counter ever goes down.

  xiaoai_queue_jobs{state}                        queued | running | undelivered (made, not sent) | deferred
  xiaoai_jobs_finished_total{state}               delivered | failed | cancelled (final states)
  xiaoai_jobs_failed_total{reason}                oom | crash | lease_lost | delivery | image_lost |
                                                  content_blocked | other (the job's error, grouped)
  xiaoai_refunds_total{reason}                    refund ledger rows (cancelled | failed | delivery failed …)
  xiaoai_refunded_units_total{reason}
  xiaoai_generation_seconds{model,resolution}     histogram of generation time (job.seconds)
  xiaoai_delivery_attempts_total{channel}         sends tried by this bot process (since it started)
  xiaoai_delivery_failures_total{channel}         … that failed for certain
  xiaoai_delivery_deferred_total{channel}         … that the platform refused for now (parked)
  xiaoai_channel_connected{channel}               1 while connected
  xiaoai_channel_last_event_timestamp_seconds{channel}
  xiaoai_worker_alive                             1 while the generation process / pool runs
  xiaoai_gpu_memory_{allocated,reserved,total}_bytes{device}
                                                  only when this process already imported torch and initialised
                                                  CUDA (the bot process normally does not: the worker does)
  xiaoai_scrape_errors_total                      collections that raised (the rest is still served)
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bot.jobs.queue import DELIVERY_GAVE_UP_ERROR, GENERATION_BUCKETS_S, LEASE_LOST_ERROR

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "XiaoaiCollector", "build_registry", "failure_reason", "render"]


def failure_reason(error: str) -> str:
    """A failed job's user-facing error text, grouped into a short label (bounded cardinality)."""
    from bot.worker import CRASH_ERROR, OOM_ERROR

    known = {OOM_ERROR: "oom", CRASH_ERROR: "crash", LEASE_LOST_ERROR: "lease_lost",
             DELIVERY_GAVE_UP_ERROR: "delivery"}
    try:
        from generation.content_check import OUTPUT_BLOCKED_TEXT

        known[OUTPUT_BLOCKED_TEXT] = "content_blocked"
    except ImportError:  # the output check is optional
        pass
    ray = sys.modules.get("bot.executors.ray_executor")  # only when this process runs the Ray pool
    if ray is not None and hasattr(ray, "IMAGE_LOST_ERROR"):
        known[ray.IMAGE_LOST_ERROR] = "image_lost"
    return known.get(error, "other")


class XiaoaiCollector:
    """Reads the app's queue, ledger, channels, executor and delivery loop at each scrape. `app` is anything
    with `settings`, `queue`, `quota`, `hub`, `executor` and `delivery` attributes (`bot.app.App`)."""

    def __init__(self, app: Any, buckets: tuple[float, ...] = GENERATION_BUCKETS_S) -> None:
        self.app = app
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        for part in (self._queue, self._jobs, self._refunds, self._delivery, self._channels, self._worker,
                     self._gpu):
            try:
                yield from part()
            except Exception:  # one broken source must not take the whole page down
                self.errors += 1
                log.exception("metrics: %s failed", part.__name__)
        errors = CounterMetricFamily("xiaoai_scrape_errors", "Metric collections that raised an error.")
        errors.add_metric([], self.errors)
        yield errors

    # ------------------------------------------------------------------ database
    def _queue(self) -> Iterator[Metric]:
        queue = self.app.queue
        counts = queue.counts()
        deferred = len(queue.deferred())
        depth = GaugeMetricFamily("xiaoai_queue_jobs", "Jobs waiting, running, made but not sent, or parked.",
                                  labels=["state"])
        depth.add_metric(["queued"], counts.get("queued", 0))
        depth.add_metric(["running"], counts.get("running", 0))
        depth.add_metric(["undelivered"], max(0, counts.get("succeeded", 0) - deferred))
        depth.add_metric(["deferred"], deferred)
        yield depth

    def _jobs(self) -> Iterator[Metric]:
        totals = self.app.queue.job_totals(self.buckets)
        finished = CounterMetricFamily("xiaoai_jobs_finished", "Jobs that reached a final state.", labels=["state"])
        by_state: dict[str, int] = defaultdict(int)
        failed: dict[str, int] = defaultdict(int)
        hist: dict[tuple[str, str], dict[str, Any]] = {}
        for t in totals:
            by_state[t.state] += t.jobs
            if t.state == "failed":
                failed[failure_reason(t.error)] += t.jobs
            if t.le:
                h = hist.setdefault((t.model or "unknown", t.resolution), {"le": defaultdict(int), "sum": 0.0})
                h["le"][t.le] += t.jobs
                h["sum"] += t.seconds_sum
        for state in ("delivered", "failed", "cancelled"):
            finished.add_metric([state], by_state.get(state, 0))
        yield finished
        reasons = CounterMetricFamily("xiaoai_jobs_failed", "Failed jobs by reason (refunded).", labels=["reason"])
        for reason, n in sorted(failed.items()):
            reasons.add_metric([reason], n)
        yield reasons
        seconds = HistogramMetricFamily("xiaoai_generation_seconds", "Generation time of a video.",
                                        labels=["model", "resolution"])
        for (model, resolution), h in sorted(hist.items()):
            running = 0
            buckets = []
            for bound in self.buckets:
                running += h["le"].get(repr(bound), 0)
                buckets.append((_le(bound), running))
            buckets.append(("+Inf", running + h["le"].get("+Inf", 0)))
            seconds.add_metric([model, resolution], buckets, h["sum"])
        yield seconds

    def _refunds(self) -> Iterator[Metric]:
        count = CounterMetricFamily("xiaoai_refunds", "Refund rows in the quota ledger.", labels=["reason"])
        units = CounterMetricFamily("xiaoai_refunded_units", "Quota units refunded.", labels=["reason"])
        for reason, n, total in self.app.quota.refund_totals():
            count.add_metric([reason or "unspecified"], n)
            units.add_metric([reason or "unspecified"], total)
        yield count
        yield units

    # ------------------------------------------------------------------ this process
    def _delivery(self) -> Iterator[Metric]:
        stats = getattr(self.app.delivery, "stats", None) or {}
        attempts = CounterMetricFamily("xiaoai_delivery_attempts", "Sends tried since the bot started.",
                                       labels=["channel"])
        failures = CounterMetricFamily("xiaoai_delivery_failures", "Sends that failed for certain.",
                                       labels=["channel"])
        deferred = CounterMetricFamily("xiaoai_delivery_deferred", "Sends the platform refused for now (parked).",
                                       labels=["channel"])
        per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for channel in getattr(self.app.hub, "channels", []):
            per[channel.name]  # every channel appears, with zeros
        for (channel, outcome), n in stats.items():
            per[channel][outcome] += n
        for channel, outcomes in sorted(per.items()):
            attempts.add_metric([channel], sum(outcomes.values()))
            failures.add_metric([channel], outcomes.get("failed", 0))
            deferred.add_metric([channel], outcomes.get("deferred", 0))
        yield attempts
        yield failures
        yield deferred

    def _channels(self) -> Iterator[Metric]:
        hub = self.app.hub
        connected = GaugeMetricFamily("xiaoai_channel_connected", "1 while the channel is connected.",
                                      labels=["channel"])
        last = GaugeMetricFamily("xiaoai_channel_last_event_timestamp_seconds",
                                 "Wall time of the channel's latest inbound message.", labels=["channel"])
        events = getattr(hub, "last_event", {})
        for channel in hub.channels:
            up = channel.name not in hub.failures and bool(channel.connected)
            connected.add_metric([channel.name], 1.0 if up else 0.0)
            if channel.name in events:
                last.add_metric([channel.name], events[channel.name])
        yield connected
        yield last

    def _worker(self) -> Iterator[Metric]:
        alive = GaugeMetricFamily("xiaoai_worker_alive", "1 while the generation process (or pool) runs.")
        executor = self.app.executor
        value = 0.0
        if executor is not None:
            view = executor.view()
            value = 1.0 if view.process_alive and not getattr(view, "down", None) else 0.0
        alive.add_metric([], value)
        yield alive

    def _gpu(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")  # never imported here: only if this process already did
        if torch is None:
            return
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not cuda.is_available() or not cuda.is_initialized():
            return
        families = {
            "allocated": GaugeMetricFamily("xiaoai_gpu_memory_allocated_bytes", "GPU memory held by tensors.",
                                           labels=["device"]),
            "reserved": GaugeMetricFamily("xiaoai_gpu_memory_reserved_bytes", "GPU memory reserved by torch.",
                                          labels=["device"]),
            "total": GaugeMetricFamily("xiaoai_gpu_memory_total_bytes", "GPU memory of the device.",
                                       labels=["device"]),
        }
        for i in range(cuda.device_count()):
            device = f"cuda:{i}"
            families["allocated"].add_metric([device], float(cuda.memory_allocated(i)))
            families["reserved"].add_metric([device], float(cuda.memory_reserved(i)))
            families["total"].add_metric([device], float(cuda.get_device_properties(i).total_memory))
        yield from families.values()


def _le(bound: float) -> str:
    return repr(float(bound))


def build_registry(app: Any) -> CollectorRegistry:
    """A registry of its own for this app (tests and several apps in one process never share one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(XiaoaiCollector(app))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text (blocking: database reads; run it in a thread)."""
    began = time.perf_counter()
    body = generate_latest(registry)
    log.debug("metrics rendered in %.3f s", time.perf_counter() - began)
    return body
