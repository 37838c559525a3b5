"""Fault injection from outside, with real processes: `xiaoai run` (the real CLI, a real SQLite file, the
worker child with the synthetic generator) serving the real ClawBot adapter against the loopback iLink
fake, while this harness SIGKILLs the bot or its worker mid-job, restarts the bot and replays messages
the platform had already delivered.

Counted at the end (all must be zero):
  lost        a `/视频` the fake delivered that has no job, or a job that never reached the user (neither
              delivered nor failed-and-told)
  double      a job with more than one spend (or refund) row in the ledger, or spends ≠ jobs
  duplicate   the same video (sha256) or the same job's ack sent more than once
  orphans     a worker process of this database still alive after its bot was SIGKILLed (5 s grace) or
              after the final stop

`python -m tests.fault_harness --rounds 20 --target bot|worker` prints the report as JSON; the bounded
form runs in CI (tests/test_fault_suite.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.clawbot_fake import ClawbotFake

ROOT = Path(__file__).resolve().parent.parent
USERS = [f"o9cq-fault-{i}@im.wechat" for i in range(3)]
PID_SUFFIX = ".worker.pid"


@dataclass
class Report:
    target: str
    rounds: int
    kills: int = 0
    requests: int = 0
    replays: int = 0
    jobs: int = 0
    delivered: int = 0
    failed_told: int = 0
    lost: int = 0
    double_charges: int = 0
    duplicate_deliveries: int = 0
    duplicate_acks: int = 0
    orphans: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.double_charges or self.duplicate_deliveries or self.duplicate_acks
                    or self.orphans)


def _config(tmp: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(
        "bot:\n  flood_user_max: 500\n  flood_chat_max: 500\n"
        f"  data_dir: {tmp / 'data'}\n"
        f"storage:\n  db_path: {tmp / 'xiaoai.db'}\n"
        "quota:\n  daily: 1000\n"
        "admin:\n  enabled: false\n"
        "queue:\n  max_pending_per_user: 100\n  max_attempts: 6\n  delivery_poll_s: 0.2\n"
        "  delivery_backoff_s: 0.2\n  delivery_backoff_max_s: 1\n  delivery_max_attempts: 20\n"
        f"worker:\n  generator: synthetic\n  output_dir: {tmp / 'videos'}\n  synthetic_steps: 8\n"
        "  synthetic_step_delay_s: 0.1\n  synthetic_width: 64\n  synthetic_height: 48\n  poll_s: 0.1\n"
        "  lease_s: 30\n  heartbeat_s: 1\n  restart_backoff_s: 0.2\n  restart_backoff_max_s: 1\n",
        encoding="utf-8",
    )
    return path


def _env(fake: ClawbotFake, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOAI__")}
    for key, value in fake.settings_values(tmp / "clawbot").items():
        env[f"XIAOAI__CHANNELS__CLAWBOT__{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return True


def _worker_pid(db: Path) -> int | None:
    path = Path(str(db) + PID_SUFFIX)
    try:
        data = json.loads(path.read_text())
        return int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


class Bot:
    """One `xiaoai run` process."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log = config, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(self.config), "--log-level", "INFO", "run",
            cwd=str(ROOT), env=self.env, stdout=handle, stderr=handle, start_new_session=True)
        handle.close()

    async def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return -9


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def run_suite(tmp: Path, *, rounds: int, target: str, seed: int = 7) -> Report:
    rng = random.Random(seed)
    report = Report(target=target, rounds=rounds)
    db = tmp / "xiaoai.db"
    async with ClawbotFake(hold_s=0.3) as fake:
        fake.write_credentials(tmp / "clawbot")
        bot = Bot(_config(tmp), _env(fake, tmp), tmp / "bot.log")
        pushed: list[tuple[int, str]] = []  # (message id, user) of every /视频

        async def polling() -> bool:
            before = fake.calls["getupdates"]
            return await _until(lambda: fake.calls["getupdates"] > before + 1, 60)

        await bot.start()
        if not await polling():
            report.notes.append("bot never polled")
            return report
        for number in range(rounds):
            batch = []
            for k in range(2):
                user = USERS[(number + k) % len(USERS)]
                mid = fake.push_text(user, f"/视频 fault round {number} clip {k}")
                batch.append((mid, user))
            pushed.extend(batch)
            report.requests += len(batch)
            # kill while a job runs (or after a random short delay when none is running yet)
            running = await _until(lambda: bool(_db_rows(db, "SELECT 1 FROM jobs WHERE state = 'running'")), 10)
            if not running:
                report.notes.append(f"round {number}: no job was running to kill")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            if target == "bot":
                worker = _worker_pid(db)
                await bot.kill()
                report.kills += 1
                if worker is not None and not await _until(lambda w=worker: not _alive(w), 5.0):
                    report.orphans += 1
                    report.notes.append(f"round {number}: worker {worker} outlived its bot")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGKILL)
                for mid, _ in batch:  # the platform re-delivers what the dead bot may not have committed
                    fake.replay(mid)
                    report.replays += 1
                await bot.start()
                if not await polling():
                    report.notes.append(f"round {number}: bot did not come back")
                    break
            else:
                worker = _worker_pid(db)
                if worker is not None and _alive(worker):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGKILL)
                    report.kills += 1
                    await _until(lambda w=worker: _worker_pid(db) not in (None, w), 20)

        def settled() -> bool:
            rows = _db_rows(db, "SELECT state, notified FROM jobs")
            return bool(rows) and len(rows) >= len({m for m, _ in pushed}) and all(
                s == "delivered" or (s in ("failed", "cancelled") and n) for s, n in rows)

        async def collect() -> bool:
            """ClawBot allows 10 sends per inbound message: a user with many videos collects the held ones by
            writing again ("回复任意消息即可领取"), as the ack told them."""
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if await _until(settled, 5):
                    return True
                parked = _db_rows(db, "SELECT DISTINCT user_id FROM jobs WHERE deferred_at IS NOT NULL")
                for (user_id,) in parked:
                    fake.push_text(str(user_id).removeprefix("clawbot:"), "在吗")
            return False

        if not await collect():
            report.notes.append("not every job settled within 180 s")
        await asyncio.sleep(1.0)  # anything sent twice would show up now
        worker = _worker_pid(db)
        await bot.stop()
        if worker is not None and not await _until(lambda: not _alive(worker), 10):
            report.orphans += 1
            report.notes.append(f"worker {worker} alive after the final stop")

        # ---- the books
        jobs = _db_rows(db, "SELECT id, message_id, state, notified, video_path FROM jobs")
        report.jobs = len(jobs)
        by_message = {row[1]: row for row in jobs}
        for mid, _ in pushed:
            row = by_message.get(f"clawbot:{mid}")
            if row is None or not (row[2] == "delivered" or (row[2] in ("failed", "cancelled") and row[3])):
                report.lost += 1
        report.delivered = sum(1 for r in jobs if r[2] == "delivered")
        report.failed_told = sum(1 for r in jobs if r[2] in ("failed", "cancelled") and r[3])
        for (error,) in _db_rows(db, "SELECT DISTINCT error FROM jobs WHERE state = 'failed'"):
            report.notes.append(f"failed job: {error}")
        ledger = _db_rows(db, "SELECT job_id, kind FROM ledger WHERE job_id IS NOT NULL")
        per_job = Counter(ledger)
        report.double_charges = sum(1 for n in per_job.values() if n > 1)
        spends = sum(1 for _, kind in ledger if kind == "spend")
        if spends != len(jobs):
            report.double_charges += abs(spends - len(jobs))
        videos = Counter(v.sha256 for v in fake.videos())
        report.duplicate_deliveries = sum(n - 1 for n in videos.values() if n > 1)
        acks = Counter(m.group(1) for t in fake.texts() if "排队" in t and "视频" in t
                       for m in [re.search(r"#(\d+)", t)] if m)
        report.duplicate_acks = sum(n - 1 for n in acks.values() if n > 1)
        if fake.violations:
            report.notes.append(f"protocol violations: {fake.violations[:3]}")
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--target", choices=["bot", "worker"], default="bot")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xiaoai-faults-") as tmp:
        report = asyncio.run(run_suite(Path(tmp), rounds=args.rounds, target=args.target))
    print(json.dumps(asdict(report), ensure_ascii=False, indent=2))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
