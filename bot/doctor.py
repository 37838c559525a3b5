"""`xiaoai doctor`: everything that stops a deployment, checked in one go and explained in Chinese and English.

Each check prints one line: ✅ fine, ⚠️ works but worth a look, ❌ the bot will not work until it is fixed, with
what to do. The exit code is 1 when any line is ❌, else 0.

Checked: the Python version; torch, CUDA, the free GPU memory and the placement `generation/planner.py` would
choose for the configured checkpoint (torch is imported only here, when the command runs); ffmpeg
(imageio-ffmpeg); the checkpoint folder (`generation.loading.validate_checkpoint`: configs and weight-file
headers, no weights read); the translator (the MarianMT folder, the OpenAI-compatible endpoint and its key);
the font of the visible "AI生成" label (`generation.labels.find_font`); every enabled chat channel's credentials and whether its host
answers on TCP; free disk space for the data folders; the SQLite file's schema version and
`PRAGMA integrity_check`.

The reachability checks are the only network use: one TCP connect (short timeout) to each endpoint the
configuration names, only when the operator runs `xiaoai doctor`, never in the background (`--offline`
skips them). Nothing is written: the database is opened read-only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from bot.settings import Settings

Status = Literal["ok", "warn", "fail"]
ICONS: dict[Status, str] = {"ok": "✅", "warn": "⚠️", "fail": "❌"}
GiB = 2**30

MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 6)  # CVE-2025-32434: torch.load(weights_only=True) could run code before 2.6
DISK_FAIL_BYTES = 1 * GiB
DISK_WARN_BYTES = 10 * GiB
MARIAN_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")
MARIAN_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
# Where Debian/Ubuntu, Fedora, Arch and macOS put a CJK font when `fc-list` is not there to ask.
CJK_FONT_PATHS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    name: str  # what was checked, bilingual and short
    detail: str  # what was found
    fix: str = ""  # what to do (empty when nothing is to be done)

    def line(self) -> str:
        fix = f" → {self.fix}" if self.fix else ""
        return f"{ICONS[self.status]} {self.name}: {self.detail}{fix}"


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    free: int
    total: int
    index: int = 0


def ok(name: str, detail: str) -> Check:
    return Check("ok", name, detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check("warn", name, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check("fail", name, detail, fix)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------- python
def check_python(version: tuple[int, ...] | None = None) -> Check:
    v = tuple(version or sys.version_info[:3])
    shown = ".".join(str(p) for p in v)
    if v[:2] < MIN_PYTHON:
        return fail("Python", f"{shown}，需要 3.11 及以上 / 3.11 or newer is required",
                    "用 python3.11 重新建虚拟环境 / recreate the venv with python3.11")  # fmt: skip
    return ok("Python", f"{shown} ({sys.executable})")


# --------------------------------------------------------------------------------- torch, CUDA, plan
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def cuda_probe() -> GpuInfo | None:
    """The first visible CUDA device and its free memory, or None without CUDA (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    return GpuInfo(name=torch.cuda.get_device_name(0), free=int(free), total=int(total))


def estimate_plan(settings: Settings, gpu: GpuInfo) -> str:
    """The placement `generation.planner.plan_placement` picks for the configured checkpoint on `gpu`,
    from the model built on the meta device and the text towers' weight-file headers (nothing is loaded)."""
    import torch

    from generation.limits import VARIANT_MAX_TEMP
    from generation.loading import (
        TEXT_FOLDERS,
        _header_shapes,
        detect_model_name,
        find_weight_files,
        read_config,
    )
    from generation.models.registry import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig
    from generation.planner import RESERVE_BYTES, Footprint, plan_placement, working_set

    gen = settings.generation
    root = Path(gen.checkpoint)  # type: ignore[arg-type]
    dit_config = read_config(root / f"diffusion_transformer_{gen.variant}")
    name = gen.model_name or detect_model_name(root, gen.variant, dit_config)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(gen.dtype, torch.bfloat16)  # auto: bf16 on CUDA
    with torch.device("meta"):
        dit = build_dit(name, dit_config).to(dtype)
        vae = CausalVideoVAE(VAEConfig.from_dict(read_config(root / "causal_video_vae"))).to(dtype)
    base = Footprint.of(dit, [], vae)
    size = torch.empty((), dtype=dtype).element_size()
    text, blocks = 0, {0}
    block_key = re.compile(r"^(.*?\.(?:block|layers|layer)\.\d+)\.")
    for sub in TEXT_FOLDERS[name]:
        per_block: dict[str, int] = {}
        for path in find_weight_files(root / sub):
            for key, shape in _header_shapes(path).items():
                n = size
                for d in shape:
                    n *= d
                text += n
                if m := block_key.match(key):
                    per_block[m.group(1)] = per_block.get(m.group(1), 0) + n
        blocks.update(per_block.values())
    fp = Footprint(dit=base.dit, dit_blocks=base.dit_blocks, text=text, text_largest_block=max(blocks), vae=base.vae)
    budget = (int(gen.memory_cap_gib * GiB) if gen.memory_cap_gib else gpu.free) - RESERVE_BYTES
    plan = plan_placement(fp, working_set(name, gen.variant, VARIANT_MAX_TEMP[gen.variant]), budget)
    return f"{name} {gen.variant}: {plan.describe()}"


def check_torch_gpu(settings: Settings, probe: Callable[[], GpuInfo | None] = cuda_probe) -> list[Check]:
    name = "torch / CUDA"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        return [fail(name, f"无法导入 torch / cannot import torch: {_one_line(exc)}",
                     "按 README 安装与 CUDA 匹配的 torch / install the torch build for your CUDA (README)")]  # fmt: skip
    checks: list[Check] = []
    version = torch.__version__
    if _version_tuple(version) < MIN_TORCH:
        checks.append(fail("torch", f"{version} 低于 2.6（CVE-2025-32434）/ older than 2.6 (CVE-2025-32434)",
                           "pip install -U 'torch>=2.6'"))  # fmt: skip
    gen = settings.generation
    real_model = settings.worker.generator == "pyramid_flow" and gen.checkpoint is not None
    if settings.executor.kind == "ray":
        checks.append(ok(name, f"torch {version}；Ray 执行器：GPU 在各 actor 主机上检查 / Ray executor: "
                               f"each actor checks its own GPU"))  # fmt: skip
        return checks
    try:
        gpu = probe()
    except Exception as exc:  # noqa: BLE001 - a driver / runtime mismatch shows up here
        return [*checks, fail(name, f"torch {version}，CUDA 初始化失败 / CUDA failed to initialise: {_one_line(exc)}",
                              "检查 NVIDIA 驱动与 torch 的 CUDA 版本是否匹配（nvidia-smi）/ check that the driver "
                              "matches torch's CUDA build (nvidia-smi)")]  # fmt: skip
    wants_cpu = gen.device == "cpu"
    if gpu is None:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU 版 / CPU build"
        if real_model and not wants_cpu:
            return [*checks, fail(name, f"torch {version}（{build}），没有可用的 GPU / no usable GPU; "
                                        f"真实模型在 CPU 上每条视频要几十分钟 / a real model on the CPU takes tens "
                                        f"of minutes a video",
                                  "安装 NVIDIA 驱动和 CUDA 版 torch，容器里加 --gpus all / install the driver and a "
                                  "CUDA torch; in a container pass --gpus all")]  # fmt: skip
        return [*checks, warn(name, f"torch {version}，没有 GPU：只适合演示模型和测试 / no GPU: fine for the demo "
                                    f"model and tests only")]  # fmt: skip
    head = (f"torch {version}, {gpu.name}，空闲 / free {gpu.free / GiB:.1f} of {gpu.total / GiB:.1f} GiB")
    if wants_cpu:
        return [*checks, warn(name, f"{head}；但 generation.device 是 cpu / but generation.device is cpu",
                              "删掉 generation.device 或设为 auto / remove generation.device or set it to auto")]
    if not real_model:
        return [*checks, ok(name, f"{head}；未配置检查点，显存规划不适用 / no checkpoint: no memory plan")]
    if gen.placement != "auto":
        return [*checks, ok(name, f"{head}；placement 固定为 / pinned to {gen.placement}")]
    try:
        plan = estimate_plan(settings, gpu)
    except Exception as exc:  # noqa: BLE001 - the checkpoint check below names the problem
        return [*checks, warn(name, f"{head}；无法估算显存规划 / no memory plan: {_one_line(exc)}")]
    status: Status = "warn" if "DOES NOT FIT" in plan else "ok"
    fix = "" if status == "ok" else "释放显存或换更大的显卡 / free GPU memory or use a larger card"
    return [*checks, Check(status, name, f"{head}；显存规划 / memory plan: {plan}", fix)]


# ------------------------------------------------------------------------------------------- ffmpeg
def check_ffmpeg() -> Check:
    name = "ffmpeg"
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20)
    except Exception as exc:  # noqa: BLE001 - missing binary, no execute bit, ...
        return fail(name, f"找不到可用的 ffmpeg / no working ffmpeg: {_one_line(exc)}",
                    "pip install -U imageio-ffmpeg（或安装系统 ffmpeg 并设置 IMAGEIO_FFMPEG_EXE）/ reinstall "
                    "imageio-ffmpeg (or set IMAGEIO_FFMPEG_EXE to a system ffmpeg)")  # fmt: skip
    if out.returncode != 0:
        return fail(name, f"{exe} -version 退出码 / exited {out.returncode}",
                    "pip install --force-reinstall imageio-ffmpeg")
    first = (out.stdout.splitlines() or ["?"])[0].split(" Copyright")[0]
    return ok(name, f"{first} ({exe})")


# --------------------------------------------------------------------------------------- checkpoint
def check_checkpoint(settings: Settings) -> Check:
    name = "模型检查点 / checkpoint"
    gen = settings.generation
    if settings.worker.generator == "synthetic":
        return warn(name, "worker.generator 是 synthetic：发出的是合成测试视频 / the synthetic test generator "
                          "sends test patterns", "部署时改为 pyramid_flow 并配置 generation.checkpoint / use "
                          "pyramid_flow with generation.checkpoint")  # fmt: skip
    if gen.checkpoint is None:
        return warn(name, "未配置 generation.checkpoint：使用微型随机权重，视频是噪声 / not set: tiny random "
                          "weights, the videos are noise", "下载权重并设置 generation.checkpoint（README「在自己的 "
                          "GPU 上跑真实模型」）/ download a checkpoint and set generation.checkpoint")  # fmt: skip
    root = Path(gen.checkpoint)
    from generation import loading

    try:
        validate = getattr(loading, "validate_checkpoint", None)
        if validate is not None:
            model = validate(root, gen.variant, gen.model_name)
        else:  # an older loading.py: folders and configs only
            loading.read_config(root / f"diffusion_transformer_{gen.variant}")
            loading.read_config(root / "causal_video_vae")
            model = gen.model_name or loading.detect_model_name(root, gen.variant)
    except loading.CheckpointError as exc:
        return fail(name, _one_line(exc), f"检查 {root} 是否完整（重新下载）/ check that {root} is complete "
                                          f"(download it again)")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - an unreadable folder, a config the model rejects
        return fail(name, f"{root}: {_one_line(exc)}", f"检查 {root} / check {root}")
    if settings.executor.kind == "ray":
        return ok(name, f"{root}（{model} {gen.variant}；Ray actor 主机上要有同样的路径 / the same path must exist "
                        f"on the actor hosts）")  # fmt: skip
    return ok(name, f"{root}（{model} {gen.variant}）")


# --------------------------------------------------------------------------------------- translator
def check_translator(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    name = "翻译 / translator"
    p = settings.prompts
    chain = p.translator_chain()
    if not chain:
        return [warn(name, "translator: none：中文提示词原样交给只懂英文的模型 / Chinese prompts go to the "
                           "English-only model untranslated")]  # fmt: skip
    checks: list[Check] = []
    for kind in chain:
        role = "主 / primary" if kind == chain[0] else "后备 / fallback"
        if kind == "marian":
            folder = Path(p.marian.model_dir)
            missing = [f for f in MARIAN_FILES if not (folder / f).is_file()]
            if not any((folder / w).is_file() for w in MARIAN_WEIGHTS):
                missing.append("pytorch_model.bin|model.safetensors")
            if missing:
                lacks = ("文件夹不存在 / folder missing" if not folder.is_dir()
                         else f"缺少 / lacks {', '.join(missing)}")  # fmt: skip
                checks.append(warn(f"{name} marian（{role}）",
                                   f"{folder.resolve()} {lacks}：中文提示词将不翻译 / Chinese prompts will go "
                                   f"untranslated",
                                   f"在能上网的机器上 hf download Helsinki-NLP/opus-mt-zh-en --local-dir {folder} "
                                   f"再拷过来 / download Helsinki-NLP/opus-mt-zh-en into {folder}"))  # fmt: skip
            else:
                checks.append(ok(f"{name} marian（{role}）", str(folder.resolve())))
        else:
            o = p.openai
            if environ.get(o.api_key_env):
                checks.append(ok(f"{name} openai（{role}）", f"{o.base_url}，${o.api_key_env} 已设置 / is set"))
            elif is_loopback(urlsplit(o.base_url).hostname or ""):
                checks.append(ok(f"{name} openai（{role}）", f"{o.base_url}（本机服务，不需要 key / local, no key)"))
            else:
                checks.append(warn(f"{name} openai（{role}）", f"${o.api_key_env} 未设置 / is not set",
                                   f"export {o.api_key_env}=sk-...（或写进 /etc/xiaoai/env）/ set it in the "
                                   f"environment (or /etc/xiaoai/env)"))  # fmt: skip
    return checks


# -------------------------------------------------------------------------------------------- fonts
def find_cjk_font(run: Callable[[list[str]], str] | None = None, paths: Iterable[str] = CJK_FONT_PATHS) -> str | None:
    """A font file with Chinese glyphs: asked of fontconfig (`fc-list :lang=zh`), else known paths."""
    if run is None and shutil.which("fc-list"):
        def run(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout

    if run is not None:
        try:
            for line in run(["fc-list", ":lang=zh", "file"]).splitlines():
                path = line.split(":", 1)[0].strip()
                if path:
                    return path
        except (OSError, subprocess.SubprocessError):
            pass
    return next((p for p in paths if Path(p).is_file()), None)


def check_fonts(settings: Settings, finder: Callable[[], str | None] | None = None) -> Check:
    """The font the visible label is drawn with (`generation.labels.find_font`: `labels.font_path`, else a
    CJK font found on this machine); without one the bot refuses to start. `finder` replaces the lookup."""
    name = "中文字体 / CJK font"
    labels = getattr(settings, "labels", None)
    if labels is not None and not labels.visible:
        return warn(name, "labels.visible: false：视频上没有「AI生成」标识 / no visible AI label on the videos",
                    "规定要求显式标识，建议打开 / the rules require a visible label: turn it back on")  # fmt: skip
    hint = "apt-get install fonts-noto-cjk（或 fonts-wqy-microhei，或设置 labels.font_path）"
    if finder is None and labels is not None:
        from generation.labels import LabelFontError, find_font

        try:
            path, index = find_font(str(labels.font_path) if labels.font_path else None, labels.text)
        except LabelFontError as exc:
            return fail(name, _one_line(exc), hint)
        return ok(name, f"{path}（face {index}，能显示 / draws「{labels.text}」）")
    font = (finder or find_cjk_font)()
    if font is None:
        return fail(name, "没有中文字体：画面上的「AI生成」标识无法绘制 / none: the visible 'AI生成' label cannot "
                          "be drawn", hint)  # fmt: skip
    return ok(name, font)


# ----------------------------------------------------------------------------------------- channels
def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def endpoint_of(url: str) -> tuple[str, int]:
    """(host, port) of a URL; the port defaults by scheme (https/wss 443, http/ws 80)."""
    parts = urlsplit(url)
    default = 443 if parts.scheme in ("https", "wss") else 80
    return parts.hostname or "", parts.port or default


def tcp_reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout_s`, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"{timeout_s:g} 秒内无应答 / no answer within {timeout_s:g} s"
    except OSError as exc:
        return _one_line(exc.strerror or exc)


def _reach(name: str, host: str, port: int, network: bool, timeout_s: float) -> Check:
    if not network:
        return ok(name, f"{host}:{port}（未测试连通性 / reachability not tested: --offline）")
    why = tcp_reachable(host, port, timeout_s)
    if why is None:
        return ok(name, f"{host}:{port} 可以连接 / reachable")
    return fail(name, f"{host}:{port} 连不上 / unreachable: {why}",
                "检查网络、防火墙和代理，以及配置里的地址 / check the network, firewall, proxy and the configured "
                "address")  # fmt: skip


def check_channels(settings: Settings, environ: Mapping[str, str], *, network: bool = True,
                   timeout_s: float = 3.0) -> list[Check]:  # fmt: skip
    from bot.channels.clawbot.state import ClawbotState
    from bot.channels.qq.settings import SECRET_ENV as QQ_SECRET
    from bot.channels.wecom.settings import read_secret as wecom_secret

    ch = settings.channels
    checks: list[Check] = []
    if ch.clawbot.enabled:
        name = "微信 ClawBot"
        state = ClawbotState(ch.clawbot.state_dir)
        path = state.credentials_path
        try:
            creds = state.load_credentials()
        except Exception:  # noqa: BLE001 - unreadable file: same advice as a missing one
            creds = None
        if creds is None:
            checks.append(fail(f"{name} 凭据 / credentials", f"{path} 不存在或无效 / missing or invalid",
                               "运行 xiaoai login clawbot 扫码登录 / run xiaoai login clawbot and scan the QR code"))
        else:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                checks.append(warn(f"{name} 凭据 / credentials", f"{path} 权限 / mode {mode:o}，其他用户可读 / "
                                   f"readable by others", f"chmod 600 {path}"))  # fmt: skip
            else:
                checks.append(ok(f"{name} 凭据 / credentials", str(path)))
        base = (creds.baseurl if creds and creds.baseurl else "") or ch.clawbot.base_url
        checks.append(_reach(f"{name} 接口 / API", *endpoint_of(base), network, timeout_s))
    if ch.wecom.enabled:
        name = "企业微信 / WeCom"
        missing = [what for what, have in (("channels.wecom.bot_id", ch.wecom.bot_id.strip()),
                                           ("$XIAOAI_WECOM_SECRET", wecom_secret(environ))) if not have]  # fmt: skip
        if missing:
            checks.append(fail(f"{name} 凭据 / credentials", f"缺少 / missing {', '.join(missing)}",
                               "在企业微信后台「智能机器人」取 Bot ID 和 Secret；Secret 只放环境变量 / take the Bot ID "
                               "and Secret from the WeCom console; the Secret goes in the environment only"))
        else:
            checks.append(ok(f"{name} 凭据 / credentials", f"bot_id {ch.wecom.bot_id}，$XIAOAI_WECOM_SECRET 已设置 / set"))
        checks.append(_reach(f"{name} 长连接 / WebSocket", *endpoint_of(ch.wecom.ws_url), network, timeout_s))
    if ch.qq.enabled:
        name = "QQ"
        missing = [what for what, have in (("channels.qq.app_id", ch.qq.app_id.strip()),
                                           (f"${QQ_SECRET}", (environ.get(QQ_SECRET) or "").strip())) if not have]
        if missing:
            checks.append(fail(f"{name} 凭据 / credentials", f"缺少 / missing {', '.join(missing)}",
                               "在 QQ 开放平台取 AppID 和 AppSecret；AppSecret 只放环境变量 / take the AppID and "
                               "AppSecret from q.qq.com; the secret goes in the environment only"))
        else:
            checks.append(ok(f"{name} 凭据 / credentials", f"app_id {ch.qq.app_id}，${QQ_SECRET} 已设置 / set"))
        seen: set[tuple[str, int]] = set()
        for label, url in (("API", ch.qq.effective_api_base), ("token", ch.qq.token_url)):
            target = endpoint_of(url)
            if target not in seen:
                seen.add(target)
                checks.append(_reach(f"{name} {label}", *target, network, timeout_s))
    conn = settings.wechaty.connection(environ)
    if conn is not None:
        name = "wechaty"
        if not conn.token:
            checks.append(warn(f"{name} 令牌 / token", "$WECHATY_PUPPET_SERVICE_TOKEN 未设置 / not set",
                               "设为网关的 WECHATY_TOKEN / set it to the gateway's WECHATY_TOKEN"))
        checks.append(_reach(f"{name} 网关 / gateway", conn.host, conn.port, network, timeout_s))
    if not checks:
        checks.append(fail("聊天通道 / channels", "一个也没有启用 / none is enabled",
                           "启用 channels.clawbot / wecom / qq 之一或设置 WECHATY_PUPPET_SERVICE_ENDPOINT（README「接入"
                           "聊天平台」）/ enable one (README, connecting chat platforms)"))  # fmt: skip
    p = settings.prompts
    if "openai" in p.translator_chain():
        checks.append(_reach("翻译接口 / translation API", *endpoint_of(p.openai.base_url), network, timeout_s))
    if p.safety.enabled and p.safety.moderation.url:
        checks.append(_reach("审核接口 / moderation API", *endpoint_of(p.safety.moderation.url), network, timeout_s))
    return checks


# --------------------------------------------------------------------------------------------- disk
def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(settings: Settings, *, fail_below: int = DISK_FAIL_BYTES, warn_below: int = DISK_WARN_BYTES) -> list[Check]:
    folders = {"数据库 / database": settings.storage.db_path.parent, "视频 / videos": settings.worker.output_dir,
               "图片 / images": settings.bot.data_dir}  # fmt: skip
    by_device: dict[int, tuple[Path, list[str]]] = {}
    checks: list[Check] = []
    for label, folder in folders.items():
        base = _existing_parent(Path(folder))
        if not os.access(base, os.W_OK | os.X_OK):
            checks.append(fail(f"磁盘 / disk {label}", f"{folder} 不可写（{base}）/ not writable",
                               "chown 给运行机器人的用户，或改配置 / chown it to the bot's user, or change the path"))
            continue
        dev = base.stat().st_dev
        by_device.setdefault(dev, (base, []))[1].append(f"{label} {folder}")
    for base, labels in by_device.values():
        free = shutil.disk_usage(base).free
        what = f"{'; '.join(labels)}：剩余 / free {free / GiB:.1f} GiB"
        if free < fail_below:
            checks.append(fail("磁盘 / disk", what, "清理旧视频（worker.output_dir）或扩容 / delete old videos or "
                                                   "grow the disk"))  # fmt: skip
        elif free < warn_below:
            checks.append(warn("磁盘 / disk", what, "空间不多了，注意清理 / running low, plan a clean-up"))
        else:
            checks.append(ok("磁盘 / disk", what))
    return checks


# ----------------------------------------------------------------------------------------- database
def check_database(settings: Settings) -> list[Check]:
    from bot.store import db as store_db

    name = "数据库 / database"
    path = Path(settings.storage.db_path)
    expected = getattr(store_db, "SCHEMA_VERSION", None)
    if not path.exists():
        return [ok(name, f"{path} 还不存在，首次启动时创建 / does not exist yet: created at first start")]
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return [fail(name, f"{path}: {_one_line(exc)}", f"检查文件权限 / check the file's permissions: ls -l {path}")]
    checks: list[Check] = []
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
        except (sqlite3.Error, ValueError):
            version = None
        if version is None:
            version = conn.execute("PRAGMA user_version").fetchone()[0] or None
        if version is None:
            checks.append(warn(f"{name} 版本 / schema", f"{path} 没有记录表结构版本 / records no schema version",
                               "确认 storage.db_path 指向小爱的数据库 / make sure storage.db_path is the bot's file"))
        elif expected is not None and version > expected:
            checks.append(fail(f"{name} 版本 / schema", f"文件是第 {version} 版，代码只认识到第 {expected} 版 / the "
                               f"file is version {version}, this code knows up to {expected}",
                               "升级代码，或从备份恢复 / upgrade the code or restore a backup"))  # fmt: skip
        elif expected is not None and version < expected:
            checks.append(ok(f"{name} 版本 / schema", f"第 {version} 版，启动时迁移到第 {expected} 版 / version "
                                                   f"{version}, migrated to {expected} at start"))  # fmt: skip
        else:
            checks.append(ok(f"{name} 版本 / schema", f"第 {version} 版 / version {version}"))
        result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if result == ["ok"]:
            checks.append(ok(f"{name} 完整性 / integrity", f"{path}: integrity_check ok"))
        else:
            checks.append(fail(f"{name} 完整性 / integrity", f"{path}: {_one_line('; '.join(result[:3]))}",
                               "停止机器人，从备份恢复，或 sqlite3 .recover / stop the bot and restore a backup "
                               "(or sqlite3 .recover)"))  # fmt: skip
    except sqlite3.Error as exc:
        checks.append(fail(name, f"{path}: {_one_line(exc)}", "文件不是 SQLite 数据库或已损坏，从备份恢复 / not a "
                                                            "SQLite file or damaged: restore a backup"))  # fmt: skip
    finally:
        conn.close()
    return checks


# --------------------------------------------------------------------------------------------- all
def run_checks(settings: Settings, environ: Mapping[str, str] | None = None, *, network: bool = True,
               timeout_s: float = 3.0, gpu_probe: Callable[[], GpuInfo | None] = cuda_probe,
               font_finder: Callable[[], str | None] | None = None) -> list[Check]:  # fmt: skip
    env = os.environ if environ is None else environ
    return [
        check_python(),
        *check_torch_gpu(settings, gpu_probe),
        check_ffmpeg(),
        check_checkpoint(settings),
        *check_translator(settings, env),
        check_fonts(settings, font_finder),
        *check_channels(settings, env, network=network, timeout_s=timeout_s),
        *check_disk(settings),
        *check_database(settings),
    ]


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ICONS}
    verdict = ("有问题必须先解决 / fix the ❌ lines before deploying" if counts["fail"]
               else "可以部署 / ready to deploy")  # fmt: skip
    return f"{counts['ok']} ✅  {counts['warn']} ⚠️  {counts['fail']} ❌ — {verdict}"


def main(config: Path | None = None, *, network: bool = True, timeout_s: float = 3.0,
         out: Callable[[str], None] = print) -> int:  # fmt: skip
    """`xiaoai doctor`: print one line per check and the summary; 0 when nothing failed, else 1."""
    from bot import settings as settings_module
    from bot.settings import SettingsError, load_settings

    try:
        if source := getattr(settings_module, "config_source", None):
            out(source(config))
        settings = load_settings(config)
    except SettingsError as exc:
        out(fail("配置 / config", _one_line(exc), "改正上面的键，再运行 xiaoai doctor / fix that key and run "
                                                "xiaoai doctor again").line())  # fmt: skip
        return 1
    checks = run_checks(settings, network=network, timeout_s=timeout_s)
    for check in checks:
        out(check.line())
    out(summary(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
