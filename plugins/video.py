"""Video plugin: `/video 提示词` (text-to-video) and image + `/video` (image-to-video), `/cancel`, `/queue`.

Command options (at the start or the end of the text, any order):
  `384p` / `768p`        resolution (only those in `video.resolutions`)
  `5s` `10s` `5秒` `10秒` duration
  `seed=7` / `种子=7`    seed (random when absent)
  `-raw` / `-原文`       send the prompt to the model untouched (no translation/enhancement)
  `-img` / `-图`         wait for an image: the prompt is used when the image arrives
  `风格=动漫` / `style=anime`   a preset of `prompts.styles` (shown by /风格): English text added to the prompt
                         (and to the negative prompt)
  `不要=模糊,变形` / `neg=…`    what the video should not show: translated and checked like the prompt, added to
                         `prompts.negative_prompt`; after the prompt it takes the rest of the text (spaces too)

Image-to-video (WeChat images carry no caption), within `bot.image_window_s` (default 300 s), same
sender, same chat:
  * image, then `/video 提示词`        → i2v with that image (the image is used once);
  * image, then `/video` (no prompt)  → i2v with the default motion prompt (`video.default_motion_prompt`);
  * `/video` (no prompt) or `/video -图 提示词`, then the image → the job is submitted when the image
    arrives (no prompt → default motion prompt).
  `/video 提示词` with no recent image is text-to-video right away.
Images are fetched from the channel only when paired with a request, then validated with Pillow and
stored as PNG under `bot.data_dir/images/`. The pairing state is in memory (a restart forgets it).

Quote to animate: a command that quotes (replies to) a photo carries it as `message.image` where the platform
sends the quoted message (ClawBot `ref_msg`, WeCom `quote`, QQ `msg_elements`); it comes before the time window.

More commands: `/重来 [#N]` (the same request with a new seed), `/我的视频` (the last 5 jobs), `/风格`,
`/续写 #N [合并] 提示词` (a new clip from job N's last frame; `合并`: joined after it into one MP4).

Every refusal happens before `JobQueue.submit`, or is decided inside its transaction, so nothing is
debited on a refusal. Duplicates (a redelivered message id) are dropped by `submit` silently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.channel import ImageFetchError
from bot.clips import ClipError, last_frame
from bot.delivery import success_caption
from bot.executors.base import MSG_GENERATOR_DOWN, generator_down, user_notice
from bot.images import ImageRejected, check_image_content, store_image, validate_image
from bot.jobs.models import Job, JobSpec, JobState, SubmitOutcome
from bot.messages import Message, OutgoingVideo
from bot.plugin import CommandCall, CommandSpec, Plugin, PluginContext, command
from bot.timefmt import format_eta, format_next_reset

log = logging.getLogger(__name__)

_RES = re.compile(r"^(\d{3,4})p$")
_DUR = re.compile(r"^(\d{1,4})(s|sec|秒|秒钟)$")
_SEED = re.compile(r"^(seed|种子)[=:](-?\d+)$")
_SEED_LIKE = re.compile(r"^(seed|种子)[=:]")  # a seed option whose value is not a whole number
_DUR_LIKE = re.compile(r"^\d+(分钟|分|min|mins|minute|minutes|m|h|小时)$")  # a duration in other units
_STYLE = re.compile(r"^(风格|style)[=:](.*)$")
_NEG = re.compile(r"^(不要|neg|negative)[=:](.*)$", re.DOTALL | re.IGNORECASE)
_RAW = frozenset({"-raw", "--raw", "-原文"})
_MERGE = frozenset({"合并", "merge", "-合并", "-merge"})
_WAIT_IMAGE = frozenset({"-img", "--img", "-image", "--image", "-图", "-图片"})


@dataclass
class VideoOptions:
    prompt: str = ""
    resolution: str | None = None
    duration_s: int | None = None
    seed: int | None = None
    raw: bool = False
    wait_image: bool = False
    style: str | None = None  # a name of `prompts.styles` (checked by `_check_options`)
    negative: list[str] = field(default_factory=list)  # `不要=…` texts, as typed
    errors: list[str] = field(default_factory=list)

    @property
    def negative_text(self) -> str:
        return "，".join(n for n in self.negative if n)


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
    elif _SEED_LIKE.match(t):  # `种子=abc`, `seed=x`: refused with the right form, never part of the prompt
        opts.errors.append(f"种子要写整数，例如 种子=7（你写的是 {token}）。")
    elif _DUR_LIKE.match(t):
        opts.errors.append(f"时长要写成秒，例如 5秒（你写的是 {token}）。")
    elif m := _STYLE.match(t):
        opts.style = m.group(2).strip()
    elif m := _NEG.match(unicodedata.normalize("NFKC", token).strip()):
        value = m.group(2).strip(" ,，、")
        if not value:
            opts.errors.append("不要= 后面写上不想出现的内容，例如 不要=模糊,变形")
        opts.negative.append(value)
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
    # `不要=…` after the prompt takes the rest of the text (`不要=模糊, 变形`), less the options that end it
    neg_at = next((i for i in range(start, end) if _NEG.match(unicodedata.normalize("NFKC", tokens[i]))), None)
    if neg_at is not None:
        while end > neg_at + 1 and _apply_option(tokens[end - 1], opts):
            end -= 1
        _apply_option(" ".join(tokens[neg_at:end]), opts)
        end = neg_at
    while end > start and _apply_option(tokens[end - 1], opts):
        end -= 1
    opts.prompt = " ".join(tokens[start:end]).strip()
    return opts


def parse_job_number(text: str) -> int | None:
    """`#12`, `＃12` or `12` → 12; None for anything else."""
    number = unicodedata.normalize("NFKC", text).strip().lstrip("#").strip()
    return int(number) if number.isdigit() and len(number) < 19 else None


@dataclass
class _Waiting:
    call: CommandCall
    opts: VideoOptions
    at: float


@dataclass
class _Pairing:
    """An image that answered a /视频 sent without a prompt, held for `bot.image_caption_wait_s` in case the
    image's caption (`/视频 提示词`) follows as its own message: then the two make one job, not two."""

    waiting: _Waiting
    image: Message
    task: asyncio.Task[None] | None = None


def _key(message: Message) -> tuple[str, str]:
    return (message.chat_id, message.sender_id)


class VideoPlugin(Plugin):
    name = "video"
    description = "文字或图片生成视频"
    settings_section = "video"

    def __init__(self) -> None:
        self._images: dict[tuple[str, str], tuple[Message, float]] = {}
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._pairing: dict[tuple[str, str], _Pairing] = {}

    def usage_for(self, ctx: PluginContext, spec: CommandSpec) -> str:
        return video_usage(ctx) if spec.name == "video" else spec.usage

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
        # This request replaces an earlier one of the same sender still waiting for its image, and takes the
        # image that just answered it (an image and its caption arrive as two messages): one job, not two.
        self._waiting.pop(_key(message), None)
        held = self._release_pairing(_key(message))
        problem = self._check_options(ctx, opts)
        if not problem and ctx.quota.is_banned(message.sender_id):
            problem = BANNED_TEXT
        if not problem and generator_down(ctx.executor):
            problem = GENERATOR_DOWN_TEXT
        if problem:
            if held is not None:  # kept for the corrected request
                self._images[_key(message)] = (held, ctx.clock())
            await ctx.reply(message, problem)
            return
        window = ctx.settings.bot.image_window_s
        image = self._take_image(ctx, message)  # the command's own image first, else the sender's latest
        if held is not None and message.image is None:
            image = held  # the image that just answered the replaced request is the newest
        if image is None and (not opts.prompt or opts.wait_image):
            self._prune(ctx)
            self._waiting[_key(message)] = _Waiting(call=call, opts=opts, at=ctx.clock())
            minutes = max(1, round(window / 60))
            if opts.prompt:
                text = f"好的，请在 {minutes} 分钟内发送一张图片，我会用它和你的提示词生成视频。"
            else:
                text = (
                    f"请在 {minutes} 分钟内发送一张图片，我会让图片动起来（未写提示词时使用默认动作描述）。\n"
                    "想用文字生成视频，请发送：/视频 提示词，例如 /视频 一只柴犬在雪地里奔跑"
                )
            await ctx.reply(message, text)
            return
        await self._submit(ctx, message, opts, image)

    @command("cancel", aliases=("取消",), usage="/取消 [#任务号]",
             help="取消你最近一个排队中或生成中的任务；/取消 #12 取消指定任务（管理员可取消任何人的）")
    async def cancel(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        if call.args:
            await self._cancel_by_id(ctx, call)
            return
        waited = self._waiting.pop(_key(message), None)
        if waited is not None or self._release_pairing(_key(message)) is not None:
            await ctx.reply(message, "已取消等待图片的视频请求，没有扣额度。")
            return
        job = ctx.queue.cancel_latest(message.sender_id, message.chat_id)
        if job is None:
            await ctx.reply(message, "你当前没有排队中或生成中的任务。发送 /视频 提示词 生成一个。")
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
            await ctx.reply(message, f"没有找到你的任务 #{number}。发送 /队列 查看你的任务。")
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
             help="再发一次你已生成的视频，例如 /发送 #12（没收到视频时用）")
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
        if video_gone(job):
            await ctx.reply(message, gone_text(ctx, job))
            return
        if job.state not in (JobState.SUCCEEDED, JobState.DELIVERED):
            await ctx.reply(message, f"任务 #{job.id} 没有可发送的视频（{_STATE_TEXT.get(str(job.state), job.state)}）。")
            return
        ctx.queue.mark_answered(message.message_id)  # a re-delivery of this request sends nothing again
        mentions = (message.sender_id,) if message.is_group else ()
        await ctx.channel.send_video(OutgoingVideo(
            chat_id=message.chat_id, video_path=job.video_path, cover_path=job.cover_path,
            caption=success_caption(job), mention_ids=mentions, reply_to=message.message_id,
            meta={"job_id": f"{job.id}-resend-{message.message_id}", "label": job.label}))

    def _own_job(self, ctx: PluginContext, call: CommandCall, number: int) -> Job | None:
        """Job `number` when the sender may use it (their own; admins: anyone's), else None."""
        job = ctx.queue.get(number)
        if job is None or not (job.user_id == call.message.sender_id or call.is_admin):
            return None
        return job

    def _refusal(self, ctx: PluginContext, message: Message) -> str | None:
        """Why no job can be made for this sender now (banned, generator down), or None."""
        if ctx.quota.is_banned(message.sender_id):
            return BANNED_TEXT
        if generator_down(ctx.executor):
            return GENERATOR_DOWN_TEXT
        return None

    @command("again", aliases=("重来",), usage="/重来 [#任务号]",
             help="把你上一个视频换个种子再做一次（/重来 #12 指定任务），按新任务扣额度")
    async def again(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        if call.args:
            number = parse_job_number(call.args)
            if number is None:
                await ctx.reply(message, "用法：/重来（重做最近一个任务）或 /重来 #任务号，例如 /重来 #12")
                return
            job = self._own_job(ctx, call, number)
            if job is None:
                await ctx.reply(message, f"没有找到你的任务 #{number}，没有扣额度。发送 /我的视频 查看你的任务。")
                return
        else:
            latest = ctx.queue.latest_of(message.sender_id, 1)
            if not latest:
                await ctx.reply(message, "你还没有生成过视频，先发送 /视频 提示词 生成一个吧。")
                return
            job = latest[0]
        problem = self._refusal(ctx, message)
        if problem is None and job.image_path and not Path(job.image_path).is_file():
            problem = f"任务 #{job.id} 用的图片已经不保存了，没法重做，没有扣额度。请重新发图片和 /视频。"
        if problem is None and not ctx.settings.serves(job.resolution, job.duration_s):
            problem = (f"现在的模型做不了 {job.resolution} {job.duration_s} 秒的视频，没有扣额度。"
                       f"可以发 {video_example(ctx)}")
        if problem is not None:
            await ctx.reply(message, problem)
            return
        seed = job.seed
        while seed == job.seed and ctx.settings.video.max_seed > 0:
            seed = secrets.randbelow(ctx.settings.video.max_seed + 1)
        group_id = message.chat_id if message.is_group else None
        ctx.quota.ensure_user(message.sender_id, group_id)
        spec = JobSpec(
            message_id=message.message_id, user_id=message.sender_id, user_name=message.sender_name,
            chat_id=message.chat_id, chat_kind=str(message.kind), group_id=group_id, prompt=job.prompt,
            final_prompt=job.final_prompt, resolution=job.resolution, duration_s=job.duration_s, seed=seed,
            image_path=job.image_path, cost=ctx.quota.cost_for(job.resolution, job.duration_s),
            model=ctx.settings.model_key(), negative_prompt=job.negative_prompt, parent_id=job.parent_id,
            merge=job.merge)
        outcome = ctx.queue.submit(spec)
        log.info("again job=%s -> %s job=%s", job.id, outcome.status, outcome.job.id if outcome.job else None,
                 extra={"user_id": message.sender_id, "message_id": message.message_id})
        text = self._outcome_text(ctx, outcome, spec, False, [f"重做 #{job.id}：同样的设置，换了新种子。"])
        if text:
            await ctx.reply(message, text)

    @command("mine", aliases=("我的视频",), usage="/我的视频", help="查看你最近的 5 个视频任务")
    async def mine(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        jobs = ctx.queue.latest_of(message.sender_id, 5)
        if not jobs:
            await ctx.reply(message, "你还没有生成过视频，发送 /视频 提示词 试试。")
            return
        lines = [f"你最近的 {len(jobs)} 个视频："]
        for job in jobs:
            state = STATE_NAMES.get(str(job.state), str(job.state))
            if job.state is JobState.RUNNING:
                state += f" {round((job.progress or 0) * 100)}%"
            elif video_gone(job):
                state += "（视频已过期）"
            lines.append(f"#{job.id} {state} · {_when(ctx, job.created_at)} · {_short(job.prompt, 20)}")
        lines.append("/发送 #任务号 再发一次；/重来 #任务号 换个种子重做；/续写 #任务号 提示词 接着拍。")
        await ctx.reply(message, "\n".join(lines))

    @command("styles", aliases=("风格", "style"), usage="/风格", help="查看可用的画面风格，用法 /视频 风格=动漫 提示词")
    async def styles(self, ctx: PluginContext, call: CommandCall) -> None:
        await ctx.reply(call.message, styles_text(ctx))

    @command("continue", aliases=("续写",), usage="/续写 #任务号 [合并] 提示词",
             help="从任务 #N 的最后一帧接着生成一段（加「合并」则接成一个视频），按新任务扣额度")
    async def continue_clip(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        tokens = call.args.split()
        number = parse_job_number(tokens[0]) if tokens else None
        if number is None:
            await ctx.reply(message, "用法：/续写 #任务号 提示词，例如 /续写 #12 镜头拉远，小猫跳下窗台"
                                     "（加「合并」：/续写 #12 合并 提示词，两段接成一个视频）")
            return
        rest = tokens[1:]
        merge = bool(rest) and unicodedata.normalize("NFKC", rest[0]).lower() in _MERGE
        opts = parse_video_args(" ".join(rest[1:] if merge else rest))
        parent = self._own_job(ctx, call, number)
        if parent is None:
            await ctx.reply(message, f"没有找到你的任务 #{number}，没有扣额度。发送 /我的视频 查看你的任务。")
            return
        if video_gone(parent):
            problem: str | None = (f"任务 #{parent.id} 的视频已经不保存了（视频只保留 "
                                   f"{ctx.settings.retention.keep_days} 天），没法续写，没有扣额度。")
        elif parent.state not in (JobState.SUCCEEDED, JobState.DELIVERED):
            problem = (f"任务 #{parent.id} 还没有生成好（{STATE_NAMES.get(str(parent.state), parent.state)}），"
                       "要等它生成成功才能续写。没有扣额度。")
        else:
            opts.resolution, opts.duration_s = parent.resolution, parent.duration_s  # same size as the clip
            opts.prompt = opts.prompt or parent.prompt  # no prompt: the scene goes on as it was described
            problem = self._check_options(ctx, opts) or self._refusal(ctx, message)
        if problem is not None:
            await ctx.reply(message, problem)
            return
        await self._submit(ctx, message, opts, None, frame_of=parent, merge=merge)

    @command("queue", aliases=("队列",), usage="/队列", help="查看队列和你的任务位置")
    async def queue(self, ctx: PluginContext, call: CommandCall) -> None:
        jobs = ctx.queue.snapshot()
        running = [j for j in jobs if j.state == JobState.RUNNING]
        queued = [j for j in jobs if j.state == JobState.QUEUED]
        lines = [f"当前队列：生成中 {len(running)} 个，排队 {len(queued)} 个。"]
        mine = [j for j in jobs if j.user_id == call.message.sender_id]
        guessed = False
        for job in mine:
            if job.state == JobState.RUNNING:
                lines.append(f"#{job.id} 生成中 {round((job.progress or 0) * 100)}%：{_short(job.prompt)}")
            else:
                pos, eta, measured = ctx.queue.place_detail(job.id)
                guessed = guessed or not measured
                lines.append(f"#{job.id} 排队第 {pos} 位，{eta_phrase(eta, measured, say_why=False)}：{_short(job.prompt)}")
        if not mine:
            lines.append("你没有排队中的任务。")
        if guessed:
            lines.append(f"（预计时间是估算：{NO_TIMINGS}）")
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
            grace = ctx.settings.bot.image_caption_wait_s
            if not waiting.opts.prompt and grace > 0:  # its caption may be the next message: wait a moment
                pairing = self._pairing[key] = _Pairing(waiting, message)
                pairing.task = asyncio.create_task(self._pair_later(ctx, key, pairing, grace),
                                                   name=f"pair-image-{message.message_id}")
                return True
            await self._submit(ctx, waiting.call.message, waiting.opts, message)
        else:
            self._images[key] = (message, ctx.clock())
        return True

    def _release_pairing(self, key: tuple[str, str]) -> Message | None:
        """Stop a held image pairing (a newer request or /取消 came); returns its image."""
        pairing = self._pairing.pop(key, None)
        if pairing is None:
            return None
        if pairing.task is not None and pairing.task is not asyncio.current_task():
            pairing.task.cancel()
        return pairing.image

    async def _pair_later(self, ctx: PluginContext, key: tuple[str, str], pairing: _Pairing, grace: float) -> None:
        """No caption came: the held image makes the waiting request's job, with the default motion prompt."""
        await asyncio.sleep(grace)
        if self._pairing.get(key) is not pairing:
            return
        del self._pairing[key]
        message = pairing.waiting.call.message
        try:
            await self._submit(ctx, message, pairing.waiting.opts, pairing.image)
        except Exception:  # outside the dispatcher: its guard does not cover this task
            log.exception("submitting the image request failed message=%s", message.message_id)
            try:
                await ctx.reply(message, "抱歉，小爱刚才出了点问题，请重新发送图片和 /视频。")
            except Exception:
                log.exception("could not send the error reply message=%s", message.message_id)

    def _prune(self, ctx: PluginContext) -> None:
        oldest = ctx.clock() - ctx.settings.bot.image_window_s
        for key in [k for k, (_, at) in self._images.items() if at < oldest]:
            del self._images[key]
        for key in [k for k, w in self._waiting.items() if w.at < oldest]:
            del self._waiting[key]

    def _take_image(self, ctx: PluginContext, message: Message) -> Message | None:
        """The image for this command: one attached to the command itself (a WeCom mixed message, a ClawBot
        quote of a photo) first, else the sender's latest image in this chat."""
        self._prune(ctx)
        found = self._images.pop(_key(message), None)
        if message.image is not None:
            return message
        return found[0] if found else None

    # -- submit -------------------------------------------------------------------------------
    def _check_options(self, ctx: PluginContext, opts: VideoOptions) -> str | None:
        video = ctx.settings.video
        if opts.errors:
            return " ".join(opts.errors[:2]) + f"\n用法：{video_usage(ctx)}"
        allowed = ctx.settings.supported_resolutions()
        if opts.resolution is not None and opts.resolution not in allowed:
            return f"当前模型不支持 {opts.resolution}，可选分辨率：{'、'.join(allowed)}。"
        if opts.duration_s is not None and opts.duration_s not in video.durations_s:
            allowed = "、".join(f"{d} 秒" for d in video.durations_s)
            return f"不支持 {opts.duration_s} 秒的时长，可选：{allowed}。"
        resolution = opts.resolution or ctx.settings.default_resolution()
        duration = opts.duration_s or ctx.settings.default_duration(resolution)
        if not ctx.settings.serves(resolution, duration):
            return _combination_refusal(ctx, opts, resolution, duration)
        if opts.seed is not None and not 0 <= opts.seed <= video.max_seed:
            return f"种子需要是 0 到 {video.max_seed} 之间的整数。"
        limit = ctx.settings.bot.max_prompt_chars
        if len(opts.prompt) > limit:
            return f"提示词太长了（{len(opts.prompt)} 字），请控制在 {limit} 字以内。"
        if opts.style is not None and ctx.settings.prompts.find_style(opts.style) is None:
            return f"没有「{_short(opts.style, 12)}」这个风格，没有扣额度。{styles_text(ctx)}"
        neg_limit = ctx.settings.prompts.max_negative_chars
        if len(opts.negative_text) > neg_limit:
            return (f"「不要=」的内容太长了（{len(opts.negative_text)} 字），请控制在 {neg_limit} 字以内，"
                    "没有扣额度。")
        return None

    async def _submit(
        self, ctx: PluginContext, message: Message, opts: VideoOptions, image_msg: Message | None,
        *, frame_of: Job | None = None, merge: bool = False,
    ) -> None:
        """Prepare and queue one request. `frame_of`: `/续写` — the image is that job's last frame."""
        ids = {"user_id": message.sender_id, "message_id": message.message_id, "chat_id": message.chat_id}
        if generator_down(ctx.executor):  # also for a request that waited for its image
            await ctx.reply(message, GENERATOR_DOWN_TEXT)
            return
        video = ctx.settings.video
        original = opts.prompt
        default_prompt_used = False
        found = ctx.settings.prompts.find_style(opts.style) if opts.style else None
        style_name, style = found if found is not None else ("", None)
        style_text = style.text if style is not None else ""
        if not original:
            if image_msg is None and frame_of is None:
                await ctx.reply(message, "提示词不能为空，例如：/视频 一只柴犬在雪地里奔跑")
                return
            original = video.default_motion_prompt
            default_prompt_used = True
        final_prompt = f"{original.rstrip(' ,.。')}, {style_text}" if style_text else original
        notes: list[str] = []
        if ctx.pipeline is not None and not default_prompt_used:
            prepared = await ctx.pipeline.prepare(
                original, raw=opts.raw, user_id=message.sender_id, chat_id=message.chat_id, style=style_text
            )
            if prepared.refused:
                log.info("prompt refused by the prompt pipeline", extra=ids)
                await ctx.reply(message, prepared.refusal_message or "抱歉，这个提示词无法生成视频。")
                return
            final_prompt = prepared.final_prompt or original
            echo = getattr(prepared, "echo_text", None)
            notes = [echo()] if callable(echo) else list(prepared.notes)
            notes = [n for n in notes if n]
        user_negative = opts.negative_text
        if user_negative and ctx.pipeline is not None:  # translated and checked like the prompt
            negative = await ctx.pipeline.prepare_negative(user_negative, user_id=message.sender_id,
                                                           chat_id=message.chat_id)
            if negative.refused:
                log.info("negative prompt refused by the prompt pipeline", extra=ids)
                await ctx.reply(message, negative.refusal_message or "抱歉，这段「不要=」的内容无法使用。")
                return
            user_negative = negative.final_prompt or user_negative
        negative_prompt = join_negative(ctx.settings.prompts.negative_prompt,
                                        style.negative if style is not None else "", user_negative)
        if style_name:
            notes.append(f"风格：{style_name}。")
        if opts.negative_text:
            notes.append(f"不要：{_short(user_negative, 60)}。")

        image_path: str | None = None
        if image_msg is not None:
            try:
                image_path = await self._fetch_image(ctx, image_msg)
            except ImageRejected as err:
                await ctx.reply(message, str(err))
                return
        elif frame_of is not None:
            try:
                image_path = await self._last_frame(ctx, frame_of, message)
            except ImageRejected as err:
                await ctx.reply(message, str(err))
                return

        resolution = opts.resolution or ctx.settings.default_resolution()
        duration = opts.duration_s or ctx.settings.default_duration(resolution)
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
            model=ctx.settings.model_key(),
            negative_prompt=negative_prompt,
            parent_id=frame_of.id if frame_of is not None else None,
            merge=merge and frame_of is not None,
        )
        outcome: SubmitOutcome = ctx.queue.submit(spec)
        log.info("submit %s job=%s", outcome.status, outcome.job.id if outcome.job else None, extra=ids)
        text = self._outcome_text(ctx, outcome, spec, default_prompt_used, notes)
        if text:
            await ctx.reply(message, text)

    async def _last_frame(self, ctx: PluginContext, job: Job, message: Message) -> str:
        """`/续写`: job's last frame, extracted with ffmpeg, checked like a received image, stored as PNG under
        `bot.data_dir/images/`. `ImageRejected` (its text is the reply) when the video cannot be read."""
        bot = ctx.settings.bot
        images = Path(bot.data_dir) / "images"
        raw = images / f"lastframe-{job.id}-{secrets.token_hex(4)}.png"
        try:
            await asyncio.to_thread(last_frame, Path(job.video_path or ""), raw)
            data = await asyncio.to_thread(raw.read_bytes)
        except (ClipError, OSError):
            log.exception("last frame of job %s could not be read", job.id,
                          extra={"job_id": job.id, "message_id": message.message_id})
            raise ImageRejected(f"没能读出任务 #{job.id} 视频的最后一帧，请稍后再试。没有扣额度。") from None
        finally:
            raw.unlink(missing_ok=True)
        img = validate_image(data, max_bytes=max(bot.max_image_bytes, len(data)), max_pixels=bot.max_image_pixels)
        if ctx.image_check is not None:
            await check_image_content(ctx.image_check, img, ids={"user_id": message.sender_id,
                                                                 "message_id": message.message_id})
        return str(store_image(img, images, f"lastframe-{message.message_id}"))

    async def _fetch_image(self, ctx: PluginContext, image_msg: Message) -> str:
        bot = ctx.settings.bot
        try:
            data = await ctx.channel.fetch_image(image_msg, max_bytes=bot.max_image_bytes)
        except ImageFetchError:
            raise ImageRejected("图片获取失败了，请重新发送图片。") from None
        except ValueError:
            raise ImageRejected(f"图片太大了，请发送 {bot.max_image_bytes // 1048576} MB 以内的图片。") from None
        img = validate_image(data, max_bytes=bot.max_image_bytes, max_pixels=bot.max_image_pixels)
        if ctx.image_check is not None:  # sexual content: refused here, before the job is queued or charged
            await check_image_content(ctx.image_check, img, ids={"user_id": image_msg.sender_id,
                                                                 "message_id": image_msg.message_id})
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
                f"额度不足：这个视频需要 {spec.cost} 点，你当前剩余 {outcome.balance} 点。"
                f"额度将在{reset}重置{_cheaper(ctx, spec, outcome.balance)}。"
            )
        if status == "too_many_pending":
            limit = _pending_limit(ctx)
            return f"你已有 {limit} 个任务在排队或生成中，请等它们完成后再提交（或发送 /取消）。"
        # At most three lines: what happened and when, the spec and the cost, then what else to know.
        job = outcome.job
        kind = "续写" if spec.parent_id else "图生视频" if spec.image_path else "文生视频"
        hint = ctx.capabilities(spec.chat_id).deferred_hint  # e.g. ClawBot: how to collect a held video
        lines = [
            f"收到！{kind}任务 #{job.id if job else '?'} 已排队，第 {outcome.position} 位，"
            f"{eta_phrase(outcome.eta_s, outcome.eta_measured)}。",
            f"{spec.resolution} · {spec.duration_s} 秒 · 种子 {spec.seed} · 消耗 {spec.cost} 点（剩余 {outcome.balance} 点）。"
            + (f"{hint.rstrip('。')}。" if hint else "") + "发送 /取消 可以取消。",
        ]
        extra: list[str] = []
        if default_prompt_used:
            extra.append("未写提示词，使用默认动作描述。")
        if notes:  # the prompt pipeline's echo: the English prompt the model gets, warnings; style, 不要=
            extra.extend(" ".join(n.split("\n")) for n in notes)
        if spec.final_prompt != spec.prompt and not any("模型提示词" in n for n in notes):
            extra.append(f"模型提示词：{spec.final_prompt}")
        if notice := user_notice(ctx.executor):
            extra.append(notice)
        if extra:
            lines.append(" ".join(extra))
        return "\n".join(lines)


BANNED_TEXT = "你已被管理员暂停使用视频生成功能，如有疑问请联系管理员。"
GENERATOR_DOWN_TEXT = f"⚠️ {MSG_GENERATOR_DOWN}，这次没有扣额度。请过一会儿再发 /视频。"
_STATE_TEXT = {"queued": "还在排队", "running": "正在生成", "failed": "生成失败", "cancelled": "已取消"}


def _pending_limit(ctx: PluginContext) -> Any:
    return getattr(ctx.settings.queue, "max_pending_per_user", "多")


def eta_phrase(eta_s: float | None, measured: bool, *, say_why: bool = True) -> str:
    """`预计 2 分钟后完成` from timings measured here; `预计约 3 分钟后完成（还没有实际耗时数据）` from defaults."""
    if eta_s is None:
        return "完成时间暂无法估计"
    if measured:
        return f"预计 {format_eta(eta_s, approx=False)}后完成"
    return f"预计{format_eta(eta_s)}后完成" + (f"（{NO_TIMINGS}）" if say_why else "")


NO_TIMINGS = "还没有实际耗时数据"


def _cheaper(ctx: PluginContext, spec: JobSpec, balance: int) -> str:
    """A cheaper request that the balance covers now, if there is one."""
    fits = [(ctx.quota.cost_for(r, d), r, d) for r, d in ctx.settings.offered()]
    fits = [f for f in fits if f[0] <= balance and f[0] < spec.cost]
    if not fits:
        return ""
    cost, resolution, duration = max(fits)
    return f"；现在可以发 /视频 {resolution} {duration}秒 …（{cost} 点）"


def video_usage(ctx: PluginContext) -> str:
    """The /视频 usage line with only what the configured model makes (resolutions, durations)."""
    settings = ctx.settings
    resolutions = settings.supported_resolutions()
    durations = [d for d in settings.video.durations_s if any(settings.serves(r, d) for r in resolutions)]
    parts = ["/视频"]
    if len(resolutions) > 1:
        parts.append(f"[{'|'.join(resolutions)}]")
    if len(durations) > 1:  # a duration only some resolutions make says which (`10秒（仅 768p）`)
        labels = []
        for d in durations:
            makers = [r for r in resolutions if settings.serves(r, d)]
            labels.append(f"{d}秒" if len(makers) == len(resolutions) else f"{d}秒（仅 {'/'.join(makers)}）")
        parts.append(f"[{'|'.join(labels)}]")
    return " ".join([*parts, "[种子=N] [-原文] 提示词"])


def video_example(ctx: PluginContext) -> str:
    """An options example the configured model makes: its longest video, at the resolution that makes it."""
    resolution, duration = max(ctx.settings.offered(), key=lambda rd: (rd[1], rd[0] == ctx.settings.default_resolution()))
    return f"/视频 {resolution} {duration}秒 种子=7 一只猫在窗台上打盹"


def _combination_refusal(ctx: PluginContext, opts: VideoOptions, resolution: str, duration: int) -> str:
    """Refuse a resolution × duration the model does not make, with the nearest request it does make."""
    settings = ctx.settings
    made = settings.supported_durations(resolution)
    prompt = _short(opts.prompt, 40) if opts.prompt else "提示词"
    head = (f"{resolution} 只能生成 {'、'.join(f'{d} 秒' for d in made)}的视频。" if made
            else f"当前模型用 {resolution} 生成不了 {duration} 秒的视频。")
    others = [r for r in settings.supported_resolutions() if r != resolution and settings.serves(r, duration)]
    if others:
        alt = others[0]
        return (f"{head}{duration} 秒请用 {alt}（{ctx.quota.cost_for(alt, duration)} 点）："
                f"/视频 {alt} {duration}秒 {prompt}")
    if made:
        return f"{head}请这样发：/视频 {resolution} {max(made)}秒 {prompt}"
    alt, seconds = settings.offered()[0]
    return f"{head}请这样发：/视频 {alt} {seconds}秒 {prompt}"


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def join_negative(*parts: str) -> str:
    """The configured default negative prompt, a style's and the user's, as one comma-separated text."""
    cleaned = [" ".join(p.split()).strip(" ,，") for p in parts if p]
    return ", ".join(p for p in cleaned if p)


def styles_text(ctx: PluginContext) -> str:
    """`可选风格：电影、动漫…` and how to use one (the /风格 reply; also the unknown-style refusal)."""
    names = list(ctx.settings.prompts.styles)
    if not names:
        return "现在没有可选的风格。"
    example = names[1] if len(names) > 1 else names[0]
    return f"可选风格：{'、'.join(names)}。用法：/视频 风格={example} 一只猫在窗台上打盹"


STATE_NAMES = {"queued": "排队中", "running": "生成中", "succeeded": "已生成", "delivered": "已发送",
               "failed": "失败", "cancelled": "已取消"}


def _when(ctx: PluginContext, ts: float) -> str:
    """`今天 08:05` / `01-02 21:30` in the quota timezone (the one the daily reset uses)."""
    tz = ZoneInfo(ctx.settings.quota.timezone)
    at = datetime.fromtimestamp(ts, tz)
    today = datetime.fromtimestamp(ctx.clock(), tz).date()
    day = "今天" if at.date() == today else "昨天" if (today - at.date()).days == 1 else f"{at:%m-%d}"
    return f"{day} {at:%H:%M}"


def video_gone(job: Job) -> bool:
    """The job made a video, but its file is no longer kept (retention removed it)."""
    return job.state in (JobState.SUCCEEDED, JobState.DELIVERED) and not (
        job.video_path and Path(job.video_path).is_file())


def gone_text(ctx: PluginContext, job: Job) -> str:
    return (f"任务 #{job.id} 的视频已经不保存了（视频只保留 {ctx.settings.retention.keep_days} 天）。"
            f"发送 /重来 #{job.id} 可以用同样的设置再生成一个。")
