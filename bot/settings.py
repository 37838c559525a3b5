"""The one typed settings object of the bot.

Loaded once at start-up from `config.yaml` and then overridden by environment variables of the
form `XIAOAI__SECTION__KEY=value` (double underscore nests; values are parsed as YAML scalars, so
`XIAOAI__QUOTA__DAILY=5` is the integer 5 and `XIAOAI__BOT__ADMINS=[wxid_a, wxid_b]` a list).

Every model forbids unknown keys, so a typo fails at start-up with the dotted key path in the
message (`SettingsError`). Secrets (the puppet token, API keys) are never read from the file: a
secret-looking key in `config.yaml` or in an `XIAOAI__` override is refused; each section reads its
own secret from its documented environment variable (e.g. `WECHATY_PUPPET_SERVICE_TOKEN`).

Each area owns its section model in its own module; this module only composes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.channels.settings import ChannelsSettings
from bot.channels.wechaty.settings import WechatySettings
from bot.executors.settings import ExecutorSettings
from bot.jobs.settings import QueueSettings, RetentionSettings, WorkerSettings
from bot.prompts.settings import PromptSettings
from bot.store.settings import QuotaSettings, StorageSettings
from bot.web.settings import AdminSettings, PlaygroundSettings
from generation.content_check import ContentCheckSettings
from generation.labels import LabelSettings
from generation.limits import serves
from generation.settings import GenerationSettings

ENV_PREFIX = "XIAOAI__"
DEFAULT_CONFIG = Path("config.yaml")
CONFIG_ENV = "XIAOAI_CONFIG"  # path of the config file, when not ./config.yaml
# Key names that hold secrets: never accepted from config.yaml or XIAOAI__ overrides.
SECRET_KEY_NAMES = frozenset({"token", "puppet_service_token", "api_key", "password", "secret"})

Resolution = Literal["384p", "768p"]


class BotSettings(BaseModel):
    """Chat behaviour: who may talk to the bot, where, and how much."""

    model_config = ConfigDict(extra="forbid")

    name: str = "小爱"  # display name of the bot, also stripped as a leading "@小爱"
    admins: list[str] = Field(default_factory=list)  # contact ids (wxid_...), never display names
    group_allowlist: list[str] = Field(default_factory=list)  # room ids; empty = every group
    allow_private: bool = True
    require_mention_in_groups: bool = False  # True: commands in groups need "@小爱" as well
    image_window_s: float = Field(default=300.0, gt=0)  # image ↔ /video pairing window
    # An image answering a /video sent without a prompt waits this long for its caption (`/video 提示词` as the
    # next message: WeChat and the playground send an image and its text apart), so the two make one job.
    image_caption_wait_s: float = Field(default=2.0, ge=0)
    max_prompt_chars: int = Field(default=300, ge=1)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    flood_user_max: int = Field(default=6, ge=1)  # commands per user per flood window
    flood_chat_max: int = Field(default=30, ge=1)  # commands per chat per flood window
    flood_window_s: float = Field(default=60.0, gt=0)
    data_dir: Path = Path("var/data")  # incoming images are stored here


class VideoSettings(BaseModel):
    """What users may ask of the video plugin."""

    model_config = ConfigDict(extra="forbid")

    resolutions: list[Resolution] = Field(default_factory=lambda: ["384p", "768p"])
    durations_s: list[int] = Field(default_factory=lambda: [5, 10])
    default_resolution: Resolution = "384p"
    default_duration_s: int = 5
    max_seed: int = Field(default=2**31 - 1, ge=0)
    # used for image-to-video when the user gave no prompt
    default_motion_prompt: str = "gentle natural motion, smooth camera movement, cinematic lighting"

    @model_validator(mode="after")
    def _defaults_are_allowed(self) -> VideoSettings:
        if not self.resolutions:
            raise ValueError("resolutions must not be empty")
        if not self.durations_s or any(d not in (5, 10) for d in self.durations_s):
            raise ValueError("durations_s must be a non-empty subset of [5, 10]")
        if self.default_resolution not in self.resolutions:
            raise ValueError(f"default_resolution {self.default_resolution} is not in resolutions")
        if self.default_duration_s not in self.durations_s:
            raise ValueError(f"default_duration_s {self.default_duration_s} is not in durations_s")
        return self


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot: BotSettings = Field(default_factory=BotSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    wechaty: WechatySettings = Field(default_factory=WechatySettings)
    channels: ChannelsSettings = Field(default_factory=ChannelsSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    playground: PlaygroundSettings = Field(default_factory=PlaygroundSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)  # AI labels: in the picture + AIGC metadata
    content_check: ContentCheckSettings = Field(default_factory=ContentCheckSettings)  # offline NSFW check

    def supported_resolutions(self) -> list[str]:
        """Resolutions users may ask for: `video.resolutions` limited to what the configured model
        makes. A real Pyramid Flow checkpoint makes only its own variant (`generation.variant`); the
        tiny random-weight model and the synthetic generator make both."""
        allowed = list(self.video.resolutions)
        if self.worker.generator == "pyramid_flow" and self.generation.checkpoint is not None:
            allowed = [r for r in allowed if r == self.generation.variant]
        return allowed

    def default_resolution(self) -> str:
        allowed = self.supported_resolutions()
        return self.video.default_resolution if self.video.default_resolution in allowed else allowed[0]

    def serves(self, resolution: str, duration_s: int) -> bool:
        """Whether users may ask for this combination: allowed by `video.*` and made by the configured
        generator (`generation.limits.serves`: Pyramid Flow makes 10 s only at 768p)."""
        return (resolution in self.supported_resolutions() and duration_s in self.video.durations_s
                and serves(self.worker.generator, resolution, duration_s))

    def supported_durations(self, resolution: str) -> list[int]:
        return [d for d in self.video.durations_s if self.serves(resolution, d)]

    def default_duration(self, resolution: str) -> int:
        """`video.default_duration_s` when `resolution` makes it, else the nearest duration it makes."""
        made = self.supported_durations(resolution) or list(self.video.durations_s)
        want = self.video.default_duration_s
        return want if want in made else min(made, key=lambda d: (abs(d - want), d))

    def offered(self) -> list[tuple[str, int]]:
        """Every (resolution, seconds) users may ask for, in the configured order."""
        return [(r, d) for r in self.supported_resolutions() for d in self.supported_durations(r)]

    def model_key(self) -> str:
        """Which model makes the videos, for per-model timings (`JobQueue` ETA): `synthetic`, `tiny` (the
        random-weight demo model) or the checkpoint's model name (`pyramid_flow` when not configured)."""
        if self.worker.generator == "synthetic":
            return "synthetic"
        if self.generation.checkpoint is None:
            return "tiny"
        return self.generation.model_name or "pyramid_flow"

    @model_validator(mode="after")
    def _model_can_serve_a_resolution(self) -> Settings:
        if not self.supported_resolutions():
            raise ValueError(
                f"video.resolutions {self.video.resolutions} has no resolution the configured checkpoint "
                f"makes (generation.variant={self.generation.variant})"
            )
        if not self.offered():
            raise ValueError(
                f"video.durations_s {self.video.durations_s} has no duration the model makes at "
                f"{'/'.join(self.supported_resolutions())} (384p: 5 s only; 768p: 5 or 10 s)"
            )
        return self


class SettingsError(ValueError):
    """Configuration is invalid; the message names every offending key path."""


def _find_secret_keys(data: Any, path: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            sub = (*path, str(key))
            if str(key).lower() in SECRET_KEY_NAMES:
                found.append(".".join(sub))
            found.extend(_find_secret_keys(value, sub))
    return found


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn `XIAOAI__A__B=v` variables into a nested dict `{"a": {"b": v}}` (v parsed as YAML)."""
    result: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not parts or any(not p for p in parts):
            raise SettingsError(f"environment variable {name}: empty key segment")
        raw = environ[name]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"environment variable {name}: {part} is both a value and a section")
            node = child
        node[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"配置无效 / invalid configuration ({source}):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key / 未知配置项")
        else:
            lines.append(f"  {path}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def settings_from_mapping(data: Mapping[str, Any] | None, source: str = "<mapping>") -> Settings:
    data = dict(data or {})
    secrets = _find_secret_keys(data)
    if secrets:
        raise SettingsError(
            f"配置无效 / invalid configuration ({source}): secrets are read only from the environment, "
            f"remove {', '.join(secrets)} (密钥只能通过环境变量设置)"
        )
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise SettingsError(_format_errors(err, source)) from None


def config_source(path: Path | None = None, environ: Mapping[str, str] | None = None) -> str:
    """One line naming the file `load_settings` reads with the same arguments, or saying that none was
    found and the built-in defaults are used (`xiaoai run` started from another directory)."""
    env = os.environ if environ is None else environ
    config_path = Path(path if path is not None else env.get(CONFIG_ENV, DEFAULT_CONFIG))
    overrides = sorted(n for n in env if n.startswith(ENV_PREFIX))
    extra = f" + {len(overrides)} 个 {ENV_PREFIX}* 环境变量 / environment overrides" if overrides else ""
    if config_path.exists():
        return f"配置文件 / config file: {config_path.resolve()}{extra}"
    return (f"没有找到配置文件 {config_path}（当前目录 {Path.cwd()}），使用内置默认值{extra} / no config file "
            f"found: built-in defaults (choose one with --config or {CONFIG_ENV})")


def _yaml_error(err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where (line, column, 1-based) and what."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(err, "problem", None) or str(err)
    return f"不是有效的 YAML / not valid YAML at {where}{' '.join(str(what).split())}"


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (default: $XIAOAI_CONFIG or ./config.yaml; a missing default file means all
    defaults), apply `XIAOAI__` overrides from `environ` (default: os.environ) and validate."""
    env = os.environ if environ is None else environ
    explicit = path is not None or CONFIG_ENV in env
    config_path = Path(path if path is not None else env.get(CONFIG_ENV, DEFAULT_CONFIG))
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise SettingsError(f"配置无效 / invalid configuration ({config_path}): {_yaml_error(err)}") from None
        except (OSError, UnicodeDecodeError) as err:
            why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (err.strerror or str(err))
            raise SettingsError(f"配置文件无法读取 / cannot read the config file {config_path}: {why}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"配置无效 / invalid configuration ({config_path}): top level must be a mapping")
        data = loaded or {}
    elif explicit:
        raise SettingsError(f"配置文件不存在 / config file not found: {config_path}")
    secrets = _find_secret_keys(data)
    if secrets:
        raise SettingsError(
            f"配置无效 / invalid configuration ({config_path}): secrets are read only from the environment, "
            f"remove {', '.join(secrets)} (密钥只能通过环境变量设置)"
        )
    overrides = env_overrides(env)
    source = f"{config_path} + {ENV_PREFIX}* environment" if overrides else str(config_path)
    return settings_from_mapping(_merge(data, overrides), source)
