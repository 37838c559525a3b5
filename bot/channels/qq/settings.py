"""Settings section `channels.qq`: the QQ official bot (API v2) channel.

The AppSecret is a secret and is never part of this model (nor of `config.yaml`): it is read only from
the environment variable `XIAOAI_QQ_SECRET` (`SECRET_ENV`). Everything else can be set in
`config.yaml` under `channels.qq` or with `XIAOAI__CHANNELS__QQ__<KEY>` overrides.

Durations are seconds as floats so tests can shrink them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECRET_ENV = "XIAOAI_QQ_SECRET"
DEFAULT_API_BASE = "https://api.sgroup.qq.com"
SANDBOX_API_BASE = "https://sandbox.api.sgroup.qq.com"
DEFAULT_TOKEN_URL = "https://bots.qq.com/app/getAppAccessToken"
GROUP_AND_C2C_EVENT = 1 << 25


class QQSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # The bot's AppID from the QQ Open Platform (not a secret). The AppSecret comes from XIAOAI_QQ_SECRET.
    app_id: str = ""
    api_base: str = DEFAULT_API_BASE
    token_url: str = DEFAULT_TOKEN_URL
    # Use the sandbox API (only when api_base is left at its default).
    sandbox: bool = False
    # The bot's display name, stripped from the start of group messages ("@小爱 /视频 …").
    bot_name: str | None = None
    # Passive replies: a user's message id may be quoted as `msg_id` for this long after it arrived, at
    # most `passive_replies_per_msg` times. The sources disagree (groups 5 min / 5 replies in the old
    # docs, "1 hour, 4 replies" in the 2026 openclaw-qqbot source); the defaults are the strict reading.
    passive_window_s: float = Field(default=300.0, gt=0)
    passive_replies_per_msg: int = Field(default=4, ge=1)
    # A msg_id is not used when less than this is left of its window (upload/network latency).
    passive_margin_s: float = Field(default=5.0, ge=0)
    # Refresh the access token this long before it expires (and once after a 401).
    token_refresh_margin_s: float = Field(default=60.0, ge=0)
    # Gateway: reconnect with capped exponential backoff (with jitter) between these bounds.
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    reconnect_factor: float = Field(default=2.0, ge=1.0)
    # Hello must arrive, and Identify/Resume be answered, within this long.
    gateway_timeout_s: float = Field(default=20.0, gt=0)
    # Videos above this size are uploaded in parts (upload_prepare → PUT parts → upload_part_finish).
    upload_chunked_above_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # REST calls: timeout, and retries of network errors / 5xx with backoff.
    request_timeout_s: float = Field(default=30.0, gt=0)
    upload_timeout_s: float = Field(default=300.0, gt=0)
    send_retries: int = Field(default=3, ge=0)
    send_retry_initial_s: float = Field(default=1.0, ge=0)
    image_fetch_timeout_s: float = Field(default=30.0, gt=0)
    # Inbound de-duplication of event / message ids (protocol-level replays).
    dedup_max_ids: int = Field(default=5000, ge=10)
    dedup_ttl_s: float = Field(default=4 * 3600.0, gt=0)
    # Where the per-job "video sent" records live (`sent-<app_id>.json`), so a restart neither resends a
    # video nor loses track of one; None keeps them in memory only.
    state_dir: Path | None = Path("var/qq")
    # Gateway intents; GROUP_AND_C2C_EVENT (1<<25) carries group @-messages and private messages.
    intents: int = Field(default=GROUP_AND_C2C_EVENT, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> QQSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        if not self.intents & GROUP_AND_C2C_EVENT:
            raise ValueError("intents must include GROUP_AND_C2C_EVENT (1<<25)")
        return self

    @property
    def effective_api_base(self) -> str:
        """The REST base URL without a trailing slash (the sandbox one when asked for and not overridden)."""
        base = self.api_base.rstrip("/")
        if self.sandbox and base == DEFAULT_API_BASE:
            return SANDBOX_API_BASE
        return base
