"""Settings sections owned by the store: where the SQLite file lives and how quotas work.

Both models are pydantic v2 with `extra="forbid"` and a default for every field, so an empty
`storage:` / `quota:` section in `config.yaml` is valid. The root `bot.settings.Settings` imports them.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _default_costs() -> dict[str, dict[str, int]]:
    return {"384p": {"5": 1, "10": 2}, "768p": {"5": 3, "10": 6}}


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_path: Path = Path("var/xiaoai.db")  # the ONE SQLite file shared by the bot and the worker process
    busy_timeout_ms: int = Field(default=30_000, ge=100)  # how long a writer waits for the lock


class QuotaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily: int = Field(default=3, ge=0)  # units granted per user per day
    group_overrides: dict[str, int] = Field(default_factory=dict)  # group (room) id -> daily units
    costs: dict[str, dict[str, int]] = Field(default_factory=_default_costs)  # resolution -> seconds -> units
    reset_time: str = "00:00"  # local time of day of the daily reset, HH:MM
    timezone: str = "Asia/Shanghai"

    @field_validator("reset_time")
    @classmethod
    def _check_reset_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"reset_time must be HH:MM (24 h), got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("group_overrides")
    @classmethod
    def _check_overrides(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"daily allowance must be >= 0: {bad}")
        return value

    @model_validator(mode="after")
    def _check_costs(self) -> QuotaSettings:
        for resolution, table in self.costs.items():
            for seconds, units in table.items():
                if not seconds.isdigit() or units < 0:
                    raise ValueError(f"costs.{resolution}.{seconds}: need a whole number of seconds and units >= 0")
        return self

    @property
    def reset_hour_minute(self) -> tuple[int, int]:
        hour, minute = self.reset_time.split(":")
        return int(hour), int(minute)
