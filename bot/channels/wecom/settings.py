"""Settings section `channels.wecom`: the WeCom AI bot (企业微信智能机器人) over its WebSocket long connection.

The long-connection Secret is never part of this model (nor of `config.yaml`): it is read only from the
environment variable `XIAOAI_WECOM_SECRET` (`read_secret`). Durations are seconds as floats so tests can
shrink them; byte limits follow the WeCom notes (`/work/shared/research/channels-2026.md` §2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECRET_ENV = "XIAOAI_WECOM_SECRET"

MAX_CHUNK_BYTES = 512 * 1024  # one upload chunk, before base64 (server limit)
MAX_UPLOAD_CHUNKS = 100  # chunks per upload (server limit, ~50 MB)


def read_secret(environ: Mapping[str, str] | None = None) -> str | None:
    """The long-connection Secret from `XIAOAI_WECOM_SECRET`, or None when unset/blank."""
    env = os.environ if environ is None else environ
    value = (env.get(SECRET_ENV) or "").strip()
    return value or None


class WecomSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    bot_id: str = ""  # the Bot ID shown in the WeCom admin console (not secret)
    ws_url: str = "wss://openws.work.weixin.qq.com"
    # Name users type after "@" in groups; stripped from the text. None: the app passes `bot.name`.
    bot_name: str | None = None

    # Connection: heartbeat `ping` every heartbeat_s; after `heartbeat_misses` unanswered pings in a
    # row the link is declared dead and rebuilt. Reconnects back off exponentially with jitter.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_s: float = Field(default=30.0, gt=0)
    heartbeat_misses: int = Field(default=2, ge=1)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # A subscribe refused on a *re*connect (Secret rotated?) is retried this often, then the channel
    # stops and the operator is alerted. A refusal on the very first connection stops `start()`.
    auth_retries: int = Field(default=2, ge=0)

    # Every command frame waits this long for the server's ack (same req_id).
    ack_timeout_s: float = Field(default=5.0, gt=0)
    # A send that finds the link down waits this long for a reconnect before failing.
    send_wait_s: float = Field(default=10.0, ge=0)
    # Commands the server refuses as busy / conflicting (errcode 6000) are retried this often.
    send_retries: int = Field(default=2, ge=0)
    send_retry_initial_s: float = Field(default=0.2, ge=0)
    # A callback's req_id is used for passive replies (`aibot_respond_msg`) while younger than this;
    # later (or after a restart) replies go out proactively (`aibot_send_msg`).
    reply_window_s: float = Field(default=300.0, ge=0)

    # Media upload over the socket.
    chunk_bytes: int = Field(default=MAX_CHUNK_BYTES, ge=1, le=MAX_CHUNK_BYTES)
    upload_retries: int = Field(default=2, ge=0)  # per chunk
    upload_retry_initial_s: float = Field(default=0.3, ge=0)
    # Videos up to this size play inline; bigger ones are re-encoded to `video_budget_bytes`, and sent
    # as a file when even that does not fit. Files are limited to `max_file_bytes`.
    max_inline_video_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    video_budget_bytes: int = Field(default=9 * 1024 * 1024 + 512 * 1024, ge=1)
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    # The re-encode: lowest CRF in [crf_min, crf_max] that fits, scaling down to min_height.
    reencode_crf_min: int = Field(default=23, ge=0, le=51)
    reencode_crf_max: int = Field(default=38, ge=0, le=51)
    reencode_min_height: int = Field(default=144, ge=32)
    reencode_preset: str = "veryfast"

    # Inbound images: download timeout (the URL is valid for ~5 minutes).
    image_timeout_s: float = Field(default=30.0, gt=0)
    image_retries: int = Field(default=2, ge=0)

    # De-duplication of inbound msgids (protocol-level replays) and memory bounds.
    dedup_size: int = Field(default=5000, ge=1)
    dedup_ttl_s: float = Field(default=3 * 3600.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> WecomSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        if self.reencode_crf_max < self.reencode_crf_min:
            raise ValueError("reencode_crf_max must be >= reencode_crf_min")
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise ValueError("ws_url must start with ws:// or wss://")
        return self
