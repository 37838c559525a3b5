"""Settings section `wechaty`: how the bot reaches the puppet service and how it sends media.

The token is a secret and is never part of this model (nor of `config.yaml`): it is read only
from `WECHATY_PUPPET_SERVICE_TOKEN`. The endpoint comes from `wechaty.endpoint` or, when that is
empty, from `WECHATY_PUPPET_SERVICE_ENDPOINT`. The generic `TOKEN` / `ENDPOINT` variables that
python-wechaty would otherwise read are ignored (see `bot.channels.wechaty.compat`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENDPOINT_ENV = "WECHATY_PUPPET_SERVICE_ENDPOINT"
TOKEN_ENV = "WECHATY_PUPPET_SERVICE_TOKEN"

_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def normalise_endpoint(value: str | None) -> str | None:
    """`host:port` stripped, or None when empty; ValueError when it is not of that shape."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _ENDPOINT_RE.match(value):
        raise ValueError("endpoint must look like host:port, e.g. 127.0.0.1:8788")
    return value


class WechatySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "host:port" of the puppet service (a `wechaty gateway`); empty = take it from the environment.
    endpoint: str | None = None
    name: str = "xiaoai-video"
    # wechaty's own cache folder (its plugin job store lives there); must be ours, not ./.wechaty.
    cache_dir: Path = Path("var/wechaty")
    # Supervision: reconnect with exponential backoff between these bounds.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    reconnect_factor: float = Field(default=2.0, ge=1.0)
    # Liveness: after this long without any event the gateway gets a Ding; without an answer within
    # liveness_timeout_s the connection is dropped and rebuilt (0 disables the check).
    liveness_interval_s: float = Field(default=60.0, ge=0)
    liveness_timeout_s: float = Field(default=15.0, gt=0)
    # Outgoing video: re-encode to fit this many bytes (WeChat refuses large videos).
    video_budget_bytes: int = Field(default=20 * 1024 * 1024, ge=64 * 1024)
    # Files bigger than this (raw bytes) go through the Upload stream (the TS server caps one gRPC
    # message at 4 MiB, and base64 inflates by 4/3).
    upload_threshold_bytes: int = Field(default=3 * 1024 * 1024, ge=1024)
    upload_chunk_bytes: int = Field(default=256 * 1024, ge=1024)
    # Best-quality-first CRF search for the re-encode (lower = better quality, bigger file).
    crf_min: int = Field(default=18, ge=0, le=51)
    crf_max: int = Field(default=38, ge=0, le=51)
    min_height: int = Field(default=144, ge=32)  # the re-encode never scales below this
    cover_max_bytes: int = Field(default=64 * 1024, ge=1024)  # covers larger than this are not attached
    # Sends that certainly failed are retried this many times with backoff before giving up.
    send_retries: int = Field(default=3, ge=0)
    send_retry_initial_s: float = Field(default=1.0, ge=0)
    rpc_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_shape(cls, value: str | None) -> str | None:
        return normalise_endpoint(value)

    @model_validator(mode="after")
    def _bounds(self) -> WechatySettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        if self.crf_max < self.crf_min:
            raise ValueError("crf_max must be >= crf_min")
        return self

    def connection(self, environ: Mapping[str, str] | None = None) -> PuppetConnection | None:
        """Endpoint and token to use, or None when no endpoint is configured anywhere.

        Only `WECHATY_PUPPET_SERVICE_ENDPOINT` / `WECHATY_PUPPET_SERVICE_TOKEN` are consulted; the
        generic `TOKEN`/`ENDPOINT` names are deliberately ignored.
        """
        env = os.environ if environ is None else environ
        endpoint = self.endpoint or normalise_endpoint(env.get(ENDPOINT_ENV))
        if not endpoint:
            return None
        token = (env.get(TOKEN_ENV) or "").strip() or None
        host, _, port = endpoint.rpartition(":")
        return PuppetConnection(host=host.strip("[]"), port=int(port), token=token)


@dataclass(frozen=True, slots=True)
class PuppetConnection:
    host: str
    port: int
    token: str | None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print the token
        return f"PuppetConnection({self.endpoint}, token={'set' if self.token else 'unset'})"
