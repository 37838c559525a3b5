"""Settings section `playground:` — the local web playground and admin dashboard (`xiaoai playground`).

The dashboard token is a secret and never comes from `config.yaml`: it is read from the environment
variable `XIAOAI_DASHBOARD_TOKEN` (see `bot.web.server.DASHBOARD_TOKEN_ENV`); when it is unset,
`xiaoai playground` makes a random one for that run and prints the dashboard link.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = re.compile(r"^[A-Za-z0-9_\-.@]{1,64}$")


class PlaygroundUser(BaseModel):
    """One simulated chat member you can act as in the playground."""

    model_config = ConfigDict(extra="forbid")

    id: str  # contact id, like a wxid; admins are recognised by id, as in WeChat
    name: str  # display name in the chat (also what "@名字" mentions match)
    admin: bool = False  # added to bot.admins for the playground run

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"user id must be 1-64 chars of A-Z a-z 0-9 _ - . @, got {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 32 or any(c.isspace() for c in value):
            raise ValueError("name must be 1-32 characters without spaces")
        return value


def _default_users() -> list[PlaygroundUser]:
    return [
        PlaygroundUser(id="wxid_play_xiaoming", name="小明"),
        PlaygroundUser(id="wxid_play_xiaohong", name="小红"),
        PlaygroundUser(id="wxid_play_admin", name="管理员", admin=True),
    ]


class PlaygroundSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # keep it on loopback: the playground has no login
    port: int = Field(default=8765, ge=0, le=65535)  # 0 = any free port (printed at start)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # largest accepted upload
    room_id: str = "playground@chatroom"  # the simulated group chat
    room_name: str = "小爱视频试玩群"
    history: int = Field(default=500, ge=10)  # chat events kept in memory for page reloads
    users: list[PlaygroundUser] = Field(default_factory=_default_users)

    @model_validator(mode="after")
    def _unique_users(self) -> PlaygroundSettings:
        if not self.users:
            raise ValueError("users must not be empty")
        ids = [u.id for u in self.users]
        names = [u.name for u in self.users]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError("user ids and names must be unique")
        return self


class AdminSettings(BaseModel):
    """Section `admin:` — the admin console that `xiaoai run` serves next to the bot (`bot.web.admin`): the
    dashboard on the real database, `GET /healthz` (no token) and `GET /metrics` (token). The token comes
    only from `XIAOAI_DASHBOARD_TOKEN` (random per run, printed, when unset)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback by default; put a TLS reverse proxy in front to reach it from elsewhere
    port: int = Field(default=8766, ge=0, le=65535)  # 0 = any free port (printed at start)
