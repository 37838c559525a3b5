"""The fault suite in a bounded form (see tests/fault_harness.py): real `xiaoai run` processes, a real
SQLite file and the ClawBot adapter against its loopback fake; SIGKILL of the bot (then replays of the
messages it had taken) and SIGKILL of the worker, mid-job. Nothing lost, nothing charged twice, nothing
sent twice, no orphan process. `XIAOAI_FAULT_ROUNDS` raises the number of rounds (the note's figures
come from `python -m tests.fault_harness --rounds 20`)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.fault_harness import run_suite

ROUNDS = int(os.environ.get("XIAOAI_FAULT_ROUNDS", "3"))


@pytest.mark.parametrize("target", ["bot", "worker"])
def test_sigkill_and_replays_lose_nothing_and_repeat_nothing(tmp_path: Path, target: str) -> None:
    report = asyncio.run(run_suite(tmp_path, rounds=ROUNDS, target=target))
    assert report.kills == ROUNDS, asdict(report)
    assert report.jobs == report.requests == 2 * ROUNDS, asdict(report)
    assert (report.lost, report.double_charges, report.duplicate_deliveries, report.duplicate_acks,
            report.orphans) == (0, 0, 0, 0, 0), asdict(report)
    assert report.delivered + report.failed_told == report.jobs and not report.notes, asdict(report)
