"""Admin alerts: a private message to every admin when the generation pool becomes unavailable (Ray
cluster unreachable or lost, dispatcher process down) and another one when it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.executors.base import Executor, generator_down
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ALERT_PREFIX = "【管理员提醒】"
RECOVERED_TEXT = ALERT_PREFIX + "生成资源池已恢复，排队中的任务会继续生成。发送 /资源池 查看详情。"


class PoolAlerts:
    def __init__(self, executor: Executor, send: Callable[[str], Awaitable[None]], *, interval_s: float = 5.0) -> None:
        self.executor = executor
        self.send = send
        self.interval_s = interval_s
        self._last: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> str | None:
        """Send an alert if the notice changed; returns what was sent (None: nothing)."""
        try:
            notice = await asyncio.to_thread(self.executor.notice)
        except Exception:
            log.exception("pool status read failed")
            return None
        if notice == self._last:
            return None
        text = f"{ALERT_PREFIX}{notice}（发送 /资源池 查看详情）" if notice else RECOVERED_TEXT
        if notice and (reason := generator_down(self.executor)):  # admins get the why and what to do
            text = (f"{ALERT_PREFIX}⚠️ 视频生成不可用：{reason}。新的 /视频 会被婉拒（不扣额度），排队的任务在恢复后继续；"
                    f"请查看生成进程的日志、修正 generation 配置后重启机器人。")
        previous, self._last = self._last, notice
        if notice is None and previous is None:
            return None
        log.warning("pool alert: %s", text)
        try:
            await self.send(text)
        except Exception:
            log.exception("pool alert could not be sent")
        return text

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_once()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="pool-alerts")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
