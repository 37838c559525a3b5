"""Video plugin: `/video 提示词` (text-to-video) and image + `/video` (image-to-video), `/cancel`, `/queue`.

Command options (at the start or the end of the text, any order):
  `384p` / `768p`        resolution (only those in `video.resolutions`)
  `5s` `10s` `5秒` `10秒` duration
  `seed=7` / `种子=7`    seed (random when absent)
  `-raw` / `-原文`       send the prompt to the model untouched (no translation/enhancement)
  `-img` / `-图`         wait for an image: the prompt is used when the image arrives

Image-to-video (WeChat images carry no caption), within `bot.image_window_s` (default 300 s), same
sender, same chat:
  * image, then `/video 提示词`        → i2v with that image (the image is used once);
  * image, then `/video` (no prompt)  → i2v with the default motion prompt (`video.default_motion_prompt`);
  * `/video` (no prompt) or `/video -图 提示词`, then the image → the job is submitted when the image
    arrives (no prompt → default motion prompt).
  `/video 提示词` with no recent image is text-to-video right away.
Images are fetched from the channel only when paired with a request, then validated with Pillow and
stored as PNG under `bot.data_dir/images/`. The pairing state is in memory (a restart forgets it).

Every refusal happens before `JobQueue.submit`, or is decided inside its transaction, so nothing is
debited on a refusal. Duplicates (a redelivered message id) are dropped by `submit` silently.
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.channel import ImageFetchError
from bot.delivery import success_caption
from bot.executors.base import user_notice
from bot.images import ImageRejected, store_image, validate_image
from bot.jobs.models import JobSpec, JobState, SubmitOutcome
from bot.messages import Message, OutgoingVideo
from bot.plugin import CommandCall, Plugin, PluginContext, command
from bot.timefmt import format_eta, format_next_reset

log = logging.getLogger(__name__)

_RES = re.compile(r"^(\d{3,4})p$")
_DUR = re.compile(r"^(\d{1,4})(s|sec|秒|秒钟)$")
_SEED = re.compile(r"^(seed|种子)[=:](-?\d+)$")
_RAW = frozenset({"-raw", "--raw", "-原文"})
_WAIT_IMAGE = frozenset({"-img", "--img", "-image", "--image", "-图", "-图片"})


@dataclass
class VideoOptions:
    prompt: str = ""
    resolution: str | None = None
    duration_s: int | None = None
    seed: int | None = None
    raw: bool = False
    wait_image: bool = False
    errors: list[str] = field(default_factory=list)


def _apply_option(token: str, opts: VideoOptions) -> bool:
    """Consume `token` into `opts` when it is an option; return False for prompt words."""
    t = unicodedata.normalize("NFKC", token).lower()
    if t in _RAW:
        opts.raw = True
    elif t in _WAIT_IMAGE:
        opts.wait_image = True
    elif m := _RES.match(t):
        opts.resolution = f"{int(m.group(1))}p"
    elif m := _DUR.match(t):
        opts.duration_s = int(m.group(1))
    elif m := _SEED.match(t):
        opts.seed = int(m.group(2))
    else:
        return False
    return True


def parse_video_args(args: str) -> VideoOptions:
    """Split options off the start and end of `args`; the middle is the prompt."""
    opts = VideoOptions()
    tokens = args.split()
    start, end = 0, len(tokens)
    while start < end and _apply_option(tokens[start], opts):
        start += 1
    while end > start and _apply_option(tokens[end - 1], opts):
        end -= 1
    opts.prompt = " ".join(tokens[start:end]).strip()
    return opts


@dataclass
class _Waiting:
    call: CommandCall
    opts: VideoOptions
    at: float


def _key(message: Message) -> tuple[str, str]:
    return (message.chat_id, message.sender_id)


class VideoPlugin(Plugin):
    name = "video"
    description = "文字或图片生成视频"
    settings_section = "video"

    def __init__(self) -> None:
        self._images: dict[tuple[str, str], tuple[Message, float]] = {}
        self._waiting: dict[tuple[str, str], _Waiting] = {}

    # -- commands -----------------------------------------------------------------------------
    @command(
        "video",
        aliases=("视频",),
        usage="/视频 [384p|768p] [5秒|10秒] [种子=N] [-原文] 提示词",
        help="用文字生成视频；先发图片再发 /视频 提示词 则用图片生成视频",
        dedupe=False,  # JobQueue.submit de-duplicates by message id inside its transaction
    )
    async def video(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        opts = parse_video_args(call.args)
        problem = self._check_options(ctx, opts)
        if problem:
            await ctx.reply(message, problem)
            return
        if ctx.quota.is_banned(message.sender_id):
            await ctx.reply(message, BANNED_TEXT)
            return
        window = ctx.settings.bot.image_window_s
        image = self._take_image(ctx, message)
        if image is None and (not opts.prompt or opts.wait_image):
            self._prune(ctx)
            self._waiting[_key(message)] = _Waiting(call=call, opts=opts, at=ctx.clock())
            minutes = max(1, round(window / 60))
            if opts.prompt:
                text = f"好的，请在 {minutes} 分钟内发送一张图片，我会用它和您的提示词生成视频。"
            else:
                text = (
                    f"请在 {minutes} 分钟内发送一张图片，我会让图片动起来（未写提示词时使用默认动作描述）。\n"
                    "想用文字生成视频，请发送：/视频 提示词，例如 /视频 一只柴犬在雪地里奔跑"
                )
            await ctx.reply(message, text)
            return
        await self._submit(ctx, message, opts, image)

    @command("cancel", aliases=("取消",), usage="/取消 [#任务号]",
             help="取消您最近一个排队中或生成中的任务；/取消 #12 取消指定任务（管理员可取消任何人的）")
    async def cancel(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        if call.args:
            await self._cancel_by_id(ctx, call)
            return
        if self._waiting.pop(_key(message), None) is not None:
            await ctx.reply(message, "已取消等待图片的视频请求。")
            return
        job = ctx.queue.cancel_latest(message.sender_id, message.chat_id)
        if job is None:
            await ctx.reply(message, "您当前没有排队中或生成中的任务。")
        elif job.state == JobState.CANCELLED:
            await ctx.reply(message, f"已取消任务 #{job.id}，额度已退还（{job.cost} 点）。")
        else:
            await ctx.reply(message, f"任务 #{job.id} 正在生成，将在下一步停止，额度会退还。")

    async def _cancel_by_id(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        number = call.args.strip().lstrip("#＃").strip()
        if not number.isdigit():
            await ctx.reply(message, "用法：/取消（取消最近的任务）或 /取消 #任务号，例如 /取消 #12")
            return
        job = ctx.queue.get(int(number))
        mine = job is not None and job.user_id == message.sender_id
        if job is None or not (mine or call.is_admin):
            await ctx.reply(message, f"没有找到您的任务 #{number}。发送 /队列 查看您的任务。")
            return
        done = ctx.queue.cancel(job.id, actor=message.sender_id)  # audited when it is someone else's job
        whose = "" if mine else f" {job.user_name or job.user_id} 的"
        if done is None:
            await ctx.reply(message, f"任务 #{job.id} 已经结束或正在停止。")
        elif done.state == JobState.CANCELLED:
            await ctx.reply(message, f"已取消{whose}任务 #{job.id}，额度已退还（{job.cost} 点）。")
        else:
            await ctx.reply(message, f"{whose.strip()}任务 #{job.id} 正在生成，将在下一步停止，额度会退还。")

    @command("resend", aliases=("发送",), usage="/发送 #任务号",
             help="再发一次您已生成的视频，例如 /发送 #12（没收到视频时用）")
    async def resend(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        number = call.args.strip().lstrip("#＃").strip()
        if not number.isdigit():
            await ctx.reply(message, "用法：/发送 #任务号，例如 /发送 #12（任务号见视频的确认消息或 /队列）")
            return
        job = ctx.queue.get(int(number))
        mine = job is not None and job.user_id == message.sender_id
        if job is None or not (mine or call.is_admin):
            await ctx.reply(message, f"没有找到你的任务 #{number}。")
            return
        if job.state not in (JobState.SUCCEEDED, JobState.DELIVERED) or not job.video_path \
                or not Path(job.video_path).is_file():
            await ctx.reply(message, f"任务 #{job.id} 没有可发送的视频（{_STATE_TEXT.get(str(job.state), job.state)}）。")
            return
        ctx.queue.mark_answered(message.message_id)  # a re-delivery of this request sends nothing again
        mentions = (message.sender_id,) if message.is_group else ()
        await ctx.channel.send_video(OutgoingVideo(
            chat_id=message.chat_id, video_path=job.video_path, cover_path=job.cover_path,
            caption=success_caption(job), mention_ids=mentions, reply_to=message.message_id,
            meta={"job_id": f"{job.id}-resend-{message.message_id}", "label": job.label}))

    @command("queue", aliases=("队列",), usage="/队列", help="查看队列和您的任务位置")
    async def queue(self, ctx: PluginContext, call: CommandCall) -> None:
        jobs = ctx.queue.snapshot()
        running = [j for j in jobs if j.state == JobState.RUNNING]
        queued = [j for j in jobs if j.state == JobState.QUEUED]
        lines = [f"当前队列：生成中 {len(running)} 个，排队 {len(queued)} 个。"]
        mine = [j for j in jobs if j.user_id == call.message.sender_id]
        for job in mine:
            if job.state == JobState.RUNNING:
                lines.append(f"#{job.id} 生成中 {round((job.progress or 0) * 100)}%：{_short(job.prompt)}")
            else:
                pos = ctx.queue.position(job.id)
                eta = format_eta(ctx.queue.eta_s(job.id))
                lines.append(f"#{job.id} 排队第 {pos} 位，预计{eta}后完成：{_short(job.prompt)}")
        if not mine:
            lines.append("您没有排队中的任务。")
        if notice := user_notice(ctx.executor):
            lines.append(notice)
        await ctx.reply(call.message, "\n".join(lines))

    # -- images -------------------------------------------------------------------------------
    async def on_message(self, ctx: PluginContext, message: Message) -> bool:
        if message.image is None:
            return False
        self._prune(ctx)
        key = _key(message)
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            log.info(
                "image %s pairs with waiting /video %s user=%s",
                message.message_id,
                waiting.call.message.message_id,
                message.sender_id,
            )
            await self._submit(ctx, waiting.call.message, waiting.opts, message)
        else:
            self._images[key] = (message, ctx.clock())
        return True

    def _prune(self, ctx: PluginContext) -> None:
        oldest = ctx.clock() - ctx.settings.bot.image_window_s
        for key in [k for k, (_, at) in self._images.items() if at < oldest]:
            del self._images[key]
        for key in [k for k, w in self._waiting.items() if w.at < oldest]:
            del self._waiting[key]

    def _take_image(self, ctx: PluginContext, message: Message) -> Message | None:
        self._prune(ctx)
        found = self._images.pop(_key(message), None)
        return found[0] if found else None

    # -- submit -------------------------------------------------------------------------------
    def _check_options(self, ctx: PluginContext, opts: VideoOptions) -> str | None:
        video = ctx.settings.video
        allowed = ctx.settings.supported_resolutions()
        if opts.resolution is not None and opts.resolution not in allowed:
            return f"当前模型不支持 {opts.resolution}，可选分辨率：{'、'.join(allowed)}。"
        if opts.duration_s is not None and opts.duration_s not in video.durations_s:
            allowed = "、".join(f"{d} 秒" for d in video.durations_s)
            return f"不支持 {opts.duration_s} 秒的时长，可选：{allowed}。"
        if opts.seed is not None and not 0 <= opts.seed <= video.max_seed:
            return f"种子需要是 0 到 {video.max_seed} 之间的整数。"
        limit = ctx.settings.bot.max_prompt_chars
        if len(opts.prompt) > limit:
            return f"提示词太长了（{len(opts.prompt)} 字），请控制在 {limit} 字以内。"
        return None

    async def _submit(
        self, ctx: PluginContext, message: Message, opts: VideoOptions, image_msg: Message | None
    ) -> None:
        ids = {"user_id": message.sender_id, "message_id": message.message_id, "chat_id": message.chat_id}
        video = ctx.settings.video
        original = opts.prompt
        default_prompt_used = False
        if not original:
            if image_msg is None:
                await ctx.reply(message, "提示词不能为空，例如：/视频 一只柴犬在雪地里奔跑")
                return
            original = video.default_motion_prompt
            default_prompt_used = True
        final_prompt = original
        notes: list[str] = []
        if ctx.pipeline is not None and not default_prompt_used:
            prepared = await ctx.pipeline.prepare(
                original, raw=opts.raw, user_id=message.sender_id, chat_id=message.chat_id
            )
            if prepared.refused:
                log.info("prompt refused by the prompt pipeline", extra=ids)
                await ctx.reply(message, prepared.refusal_message or "抱歉，这个提示词无法生成视频。")
                return
            final_prompt = prepared.final_prompt or original
            echo = getattr(prepared, "echo_text", None)
            notes = [echo()] if callable(echo) else list(prepared.notes)
            notes = [n for n in notes if n]

        image_path: str | None = None
        if image_msg is not None:
            try:
                image_path = await self._fetch_image(ctx, image_msg)
            except ImageRejected as err:
                await ctx.reply(message, str(err))
                return

        resolution = opts.resolution or ctx.settings.default_resolution()
        duration = opts.duration_s or video.default_duration_s
        seed = opts.seed if opts.seed is not None else secrets.randbelow(video.max_seed + 1)
        group_id = message.chat_id if message.is_group else None
        ctx.quota.ensure_user(message.sender_id, group_id)
        cost = ctx.quota.cost_for(resolution, duration)
        spec = JobSpec(
            message_id=message.message_id,
            user_id=message.sender_id,
            user_name=message.sender_name,
            chat_id=message.chat_id,
            chat_kind=str(message.kind),
            group_id=group_id,
            prompt=original,
            final_prompt=final_prompt,
            resolution=resolution,
            duration_s=duration,
            seed=seed,
            image_path=image_path,
            cost=cost,
        )
        outcome: SubmitOutcome = ctx.queue.submit(spec)
        log.info("submit %s job=%s", outcome.status, outcome.job.id if outcome.job else None, extra=ids)
        text = self._outcome_text(ctx, outcome, spec, default_prompt_used, notes)
        if text:
            await ctx.reply(message, text)

    async def _fetch_image(self, ctx: PluginContext, image_msg: Message) -> str:
        bot = ctx.settings.bot
        try:
            data = await ctx.channel.fetch_image(image_msg, max_bytes=bot.max_image_bytes)
        except ImageFetchError:
            raise ImageRejected("图片获取失败了，请重新发送图片。") from None
        except ValueError:
            raise ImageRejected(f"图片太大了，请发送 {bot.max_image_bytes // 1048576} MB 以内的图片。") from None
        img = validate_image(data, max_bytes=bot.max_image_bytes, max_pixels=bot.max_image_pixels)
        return str(store_image(img, bot.data_dir / "images", image_msg.message_id))

    def _outcome_text(
        self,
        ctx: PluginContext,
        outcome: SubmitOutcome,
        spec: JobSpec,
        default_prompt_used: bool,
        notes: list[str],
    ) -> str | None:
        status = outcome.status
        if status == "duplicate":
            return None
        if status == "banned":
            return BANNED_TEXT
        if status == "no_quota":
            quota = ctx.settings.quota
            reset = format_next_reset(ctx.clock(), quota.reset_time, quota.timezone)
            return (
                f"额度不足：这个视频需要 {spec.cost} 点，您当前剩余 {outcome.balance} 点。"
                f"额度将在{reset}重置。"
            )
        if status == "too_many_pending":
            limit = _pending_limit(ctx)
            return f"您已有 {limit} 个任务在排队或生成中，请等它们完成后再提交（或发送 /取消）。"
        job = outcome.job
        kind = "图生视频" if spec.image_path else "文生视频"
        lines = [
            f"收到！{kind}任务 #{job.id if job else '?'} 已排队，第 {outcome.position} 位，"
            f"预计{format_eta(outcome.eta_s)}后完成。",
            f"规格：{spec.resolution} · {spec.duration_s} 秒 · 种子 {spec.seed} · 消耗 {spec.cost} 点（剩余 {outcome.balance} 点）",
        ]
        if default_prompt_used:
            lines.append("未提供提示词，使用默认动作描述。")
        if notes:  # the prompt pipeline's echo: the English prompt the model gets, warnings
            lines.extend(notes)
        elif spec.final_prompt != spec.prompt:
            lines.append(f"模型提示词：{spec.final_prompt}")
        if notice := user_notice(ctx.executor):
            lines.append(notice)
        hint = ctx.capabilities(spec.chat_id).deferred_hint  # e.g. ClawBot: how to collect a held video
        lines.append(f"{hint}。发送 /取消 可以取消。" if hint else "发送 /取消 可以取消。")
        return "\n".join(lines)


BANNED_TEXT = "您已被管理员暂停使用视频生成功能，如有疑问请联系管理员。"
_STATE_TEXT = {"queued": "还在排队", "running": "正在生成", "failed": "生成失败", "cancelled": "已取消"}


def _pending_limit(ctx: PluginContext) -> Any:
    return getattr(ctx.settings.queue, "max_pending_per_user", "多")


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
