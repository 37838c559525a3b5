"""Settings section `channels.clawbot`: where the iLink bot API lives and how the adapter paces itself.

There is no secret here. The bot token is issued by the QR login (`xiaoai login clawbot`) and kept in
`<state_dir>/credentials.json` (mode 600); it is never part of `config.yaml`, an `XIAOAI__` override or
this model. Every duration is in seconds (floats) so tests can shrink them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_BASE_URL = "https://ilinkai.weixin.qq.com"
DEFAULT_CDN_BASE_URL = "https://novac2c.cdn.weixin.qq.com/c2c"


def client_version_number(version: str) -> int:
    """`"2.4.9"` → 0x00020409 = 132105, the `iLink-App-ClientVersion` header value."""
    parts = [int(p) for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    major, minor, patch = (max(0, min(255, p)) for p in parts)
    return (major << 16) | (minor << 8) | patch


class ClawbotSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # API origin used for login; after login the `baseurl` saved with the credentials wins.
    base_url: str = DEFAULT_BASE_URL
    cdn_base_url: str = DEFAULT_CDN_BASE_URL
    # credentials.json, sync.json (cursor + seen ids), contexts.json, sent.json live here (mode 600).
    state_dir: Path = Path("var/clawbot")
    # Scheme used for `scaned_but_redirect` hosts (tests point it at a plain-http loopback fake).
    redirect_scheme: Literal["https", "http"] = "https"
    # What we announce in every `base_info` / `iLink-App-ClientVersion` (Tencent's plugin version we follow).
    channel_version: str = Field(default="2.4.9", pattern=r"^\d{1,3}(\.\d{1,3}){0,2}$")
    bot_agent: str = Field(default="XiaoaiVideo/0.1", max_length=256, pattern=r"^[\x20-\x7e]+$")
    http_timeout_s: float = Field(default=30.0, gt=0)

    # Long poll (getupdates): client-side timeout; on timeout we just poll again with the same cursor.
    poll_timeout_s: float = Field(default=35.0, gt=0)
    poll_retry_s: float = Field(default=2.0, ge=0)  # pause after one failed poll
    poll_failures_before_backoff: int = Field(default=3, ge=1)
    poll_backoff_s: float = Field(default=30.0, ge=0)  # pause after that many consecutive failures
    # While paused for an expired session, the credentials file is checked this often for a new login.
    credentials_watch_s: float = Field(default=3.0, gt=0)

    # Reply rules of the platform (a send needs the user's latest context token).
    max_sends_per_inbound: int = Field(default=10, ge=1)
    reply_window_s: float = Field(default=24 * 3600.0, gt=0)
    send_interval_s: float = Field(default=1.5, ge=0)  # pacing between two sendmessage calls
    text_chunk_chars: int = Field(default=4000, ge=100)
    # Retries of requests that certainly did not deliver anything (connect errors, HTTP 5xx).
    send_retries: int = Field(default=3, ge=0)
    send_retry_initial_s: float = Field(default=1.0, ge=0)
    upload_retries: int = Field(default=3, ge=1)  # attempts for one CDN upload
    upload_retry_initial_s: float = Field(default=2.0, ge=0)
    upload_timeout_s: float = Field(default=300.0, gt=0)

    # Inbound de-duplication of message ids (protocol-level replays).
    dedupe_max_ids: int = Field(default=5000, ge=10)
    dedupe_ttl_s: float = Field(default=8 * 3600.0, gt=0)

    # QR login (`xiaoai login clawbot`).
    login_timeout_s: float = Field(default=480.0, gt=0)
    login_poll_interval_s: float = Field(default=1.0, ge=0)
    login_poll_timeout_s: float = Field(default=35.0, gt=0)
    max_qr_refreshes: int = Field(default=3, ge=0)
    bot_type: int = 3

    @field_validator("base_url", "cdn_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local fake)")
        return value

    @property
    def client_version(self) -> int:
        return client_version_number(self.channel_version)
