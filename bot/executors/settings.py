"""Typed settings of the executor (the `executor:` section of config.yaml): where jobs run.

`kind: local` (default) runs the embedded worker process; `kind: ray` runs one long-lived generation actor
per GPU on a Ray cluster (an existing one by `address`, or a local one started by the bot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generation.settings import ModelName, Variant

ExecutorKind = Literal["local", "ray"]
GeneratorKind = Literal["pyramid_flow", "synthetic"]
ALL_VARIANTS: tuple[Variant, ...] = ("384p", "768p")


class ActorSpec(BaseModel):
    """One kind of generation actor. `count` actors are created from it, each asking Ray for the
    resources below (one GPU each by default), so a pool can mix GPUs, checkpoints and variants."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="gpu", pattern=r"^[A-Za-z0-9_.-]{1,40}$")  # actors are named <name>-<i>
    count: int = Field(default=1, ge=0)
    # What the actor serves: job resolutions it accepts. None: whatever its generator supports.
    variants: list[Variant] | None = None
    # Overrides of the `generation:` / `worker:` sections for these actors (None: use those sections).
    generator: GeneratorKind | None = None
    checkpoint: Path | None = None
    model_name: ModelName | None = None
    # Ray resources per actor. On a GPU host keep num_gpus=1 (one actor per GPU); tests declare fake ones.
    num_gpus: float = Field(default=1.0, ge=0)
    num_cpus: float = Field(default=1.0, ge=0)
    memory_mb: int | None = Field(default=None, ge=1)
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources, e.g. {"h100": 1}
    accelerator_type: str | None = None  # e.g. "H100": only nodes with that GPU type

    @model_validator(mode="after")
    def _variants_not_empty(self) -> ActorSpec:
        if self.variants is not None and not self.variants:
            raise ValueError("variants must not be empty (leave it out to serve what the model supports)")
        return self


class ExecutorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ExecutorKind = "local"
    # -- Ray ------------------------------------------------------------------------------------
    # None: start a local Ray instance inside the dispatcher process; "host:port": join that cluster
    # (the head's GCS address printed by `ray start --head`).
    address: str | None = None
    namespace: str = "xiaoai"
    node_ip_address: str | None = None  # this host's address inside the cluster (e.g. 127.0.0.1 in tests)
    local_num_cpus: int | None = Field(default=None, ge=1)  # local instance only
    local_num_gpus: int | None = Field(default=None, ge=0)  # local instance only (None: detected)
    local_resources: dict[str, float] = Field(default_factory=dict)  # local instance only
    runtime_env: dict[str, Any] = Field(default_factory=dict)  # passed to ray.init as is
    actors: list[ActorSpec] = Field(default_factory=lambda: [ActorSpec()])
    # Route a resolution to actors advertising one model, e.g. {"768p": "pyramid_mmdit"}.
    route_model: dict[Variant, ModelName] = Field(default_factory=dict)
    actor_max_concurrency: int = Field(default=4, ge=2)  # run + status/cancel calls side by side
    tick_s: float = Field(default=0.1, gt=0)  # dispatcher loop period
    status_every_s: float = Field(default=1.0, gt=0)  # pool table refresh / progress poll period
    health_every_s: float = Field(default=5.0, gt=0)  # idle actors are pinged this often
    call_timeout_s: float = Field(default=10.0, gt=0)  # a ping/status answer later than this = unhealthy
    connect_timeout_s: float = Field(default=3.0, gt=0)  # TCP check of the cluster address before ray.init
    reconnect_s: float = Field(default=5.0, gt=0)  # wait between connection attempts
    actor_restart_backoff_s: float = Field(default=1.0, ge=0)  # doubled per consecutive failure
    actor_restart_backoff_max_s: float = Field(default=60.0, ge=0)
    stale_after_s: float = Field(default=30.0, gt=0)  # pool status older than this is reported as stale
