"""What group users asked for next, through the real dispatcher, plugins, QuotaBook and JobQueue (a real SQLite
file), with the synthetic generator run by the real `JobRunner` where a video must exist:

* styles (`风格=` / `style=`, `/风格`) and per-request negative prompts (`不要=` / `neg=`): the configured default
  negative prompt, the style's and the user's all reach the job row and the worker's `GenerationRequest`;
* `/重来` (same request, new seed, charged again), `/我的视频`, `/发送` of a video that is no longer kept;
* `/续写 #N [合并]`: a new clip from job N's last frame (joined after it with 合并, labels kept);
* every bad input (unknown job, someone else's job, expired video, unknown style, over-long `不要=`) gets a
  clear reply and nothing is charged.

The same commands end to end through the real App and its worker process: tests/test_group_requests_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from bot.jobs.models import JobState
from bot.jobs.settings import WorkerSettings
from bot.prompts import PromptPipeline, PromptSettings
from bot.worker import JobRunner, build_request
from generation.api import GenerationRequest, GenerationResult
from generation.labels import read_aigc
from generation.synthetic import SyntheticGenerator
from generation.video_io import probe
from plugins.video import parse_video_args
from tests.chat_harness import ADMIN, async_test, make_harness, make_settings, png_bytes

ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice"}
BOB = {"sender_id": "wxid_bob", "sender_name": "Bob"}
CAROL = {"sender_id": "wxid_carol", "sender_name": "Carol"}
ROOMY = {"quota": {"daily": 20}, "queue": {"max_pending_per_user": 10}}


def spends(h: Any, user: str = "wxid_alice") -> list[int]:
    return [r.delta for r in h.ledger(user) if r.kind == "spend"]


def assert_uncharged(h: Any, user: str, jobs: int = 0) -> None:
    assert len(h.jobs(user)) == jobs
    assert len(spends(h, user)) == jobs


class RecordingGenerator(SyntheticGenerator):
    """The synthetic generator, keeping every request it got."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest, out_dir: Path, **kwargs: Any) -> GenerationResult:
        self.requests.append(request)
        return super().generate(request, out_dir, **kwargs)


def runner(h: Any, tmp_path: Path) -> JobRunner:
    ws = WorkerSettings(generator="synthetic", output_dir=tmp_path / "videos", synthetic_steps=2,
                        synthetic_step_delay_s=0.0, synthetic_fps=4, synthetic_width=64, synthetic_height=48,
                        heartbeat_s=0.5, lease_s=30.0, progress_every_s=0.0)
    gen = RecordingGenerator(steps=2, step_delay_s=0.0, fps=4, width=64, height=48)
    return JobRunner(h.queue, gen, ws, "w1")


class FakeTranslator:
    name = "openai"

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.seen: list[str] = []

    async def translate(self, text: str) -> str:
        self.seen.append(text)
        return self.table.get(text, f"english of {text}")


def pipeline(table: dict[str, str]) -> tuple[PromptPipeline, FakeTranslator]:
    pipe = PromptPipeline.from_settings(PromptSettings(translator="none", enhance={"enabled": False}), environ={})
    fake = FakeTranslator(table)
    pipe.translators = [fake]
    return pipe, fake


# ------------------------------------------------------------------------------------------------ parsing
def test_options_parse_style_and_negative_at_either_end() -> None:
    opts = parse_video_args("风格=水墨 一只白鹤 飞过山谷 不要=模糊, 变形 10秒")
    assert (opts.prompt, opts.style, opts.negative_text, opts.duration_s) == ("一只白鹤 飞过山谷", "水墨", "模糊, 变形", 10)
    opts = parse_video_args("neg=blurry style=anime a cat seed=3")
    assert (opts.prompt, opts.style, opts.negative_text, opts.seed) == ("a cat", "anime", "blurry", 3)
    assert parse_video_args("a cat 不要=").errors  # an empty 不要= is refused, not part of the prompt


# ------------------------------------------------------------------------------------------------ styles
@async_test
async def test_styles_listed_applied_and_unknown_refused(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/风格", **ALICE)
    listing = h.last_text()
    assert all(name in listing for name in h.settings.prompts.styles) and "风格=" in listing
    await h.say("/视频 风格=水墨 一只白鹤飞过山谷", **ALICE)
    [job] = h.jobs("wxid_alice")
    ink = h.settings.prompts.styles["水墨"]
    assert job.prompt == "一只白鹤飞过山谷" and job.final_prompt.endswith(ink.text)
    assert job.negative_prompt == f"{h.settings.prompts.negative_prompt}, {ink.negative}"
    assert "风格：水墨" in h.last_text()
    await h.say("/video style=ANIME a cat on a sofa", **BOB)  # an alias, any case
    [bob_job] = h.jobs("wxid_bob")
    assert bob_job.final_prompt == f"a cat on a sofa, {h.settings.prompts.styles['动漫'].text}"
    await h.say("/视频 风格=蒸汽波 一只猫", **CAROL)
    assert "没有「蒸汽波」这个风格" in h.last_text() and "可选风格" in h.last_text() and "没有扣额度" in h.last_text()
    assert_uncharged(h, "wxid_carol")


# ------------------------------------------------------------------------------------------------ negative prompts
@async_test
async def test_negative_prompt_is_translated_checked_and_added_to_the_default(tmp_path: Path) -> None:
    pipe, fake = pipeline({"模糊, 变形": "blurry, deformed"})
    h = await make_harness(make_settings(tmp_path, prompts={"negative_prompt": "low quality, watermark"}),
                           pipeline=pipe)
    await h.say("/视频 a red kite in the wind 不要=模糊, 变形", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert "模糊, 变形" in fake.seen
    assert job.negative_prompt == "low quality, watermark, blurry, deformed"
    assert "不要：blurry, deformed" in h.last_text()
    # the word list applies to 不要= as to the prompt: refused, nothing charged
    await h.say("/视频 a cat 不要=裸体", **BOB)
    assert "不扣额度" in h.last_text() or "没有扣" in h.last_text()
    assert_uncharged(h, "wxid_bob")
    # over-long: refused before anything else, nothing charged
    await h.say("/视频 a cat 不要=" + "模" * 201, **CAROL)
    assert "太长" in h.last_text() and "200" in h.last_text()
    await h.say("/视频 a cat 不要=", **CAROL)
    assert "不要= 后面" in h.last_text()
    assert_uncharged(h, "wxid_carol")


@async_test
async def test_worker_request_carries_the_configured_and_the_user_negative_prompt(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, prompts={"negative_prompt": "low quality, watermark"})
    h = await make_harness(settings)
    run = runner(h, tmp_path)
    await h.say("/视频 a kite 不要=fog", **ALICE)
    await h.say("/视频 a dog", **BOB)
    first, second = run.run_once(), run.run_once()
    assert first is not None and second is not None
    assert first.state is JobState.SUCCEEDED and second.state is JobState.SUCCEEDED
    got = [r.negative_prompt for r in run.generator.requests]  # type: ignore[attr-defined]
    assert got == ["low quality, watermark, fog", "low quality, watermark"]  # the configured default reaches it
    assert build_request(first).negative_prompt == first.negative_prompt == got[0]
    # a job of an older version (no negative prompt stored) leaves the generator's own default
    from dataclasses import replace
    assert build_request(replace(first, negative_prompt="")).negative_prompt is None


def test_ray_actor_passes_the_negative_prompt_to_its_generator(tmp_path: Path) -> None:
    from bot.executors.ray_actor import GenerationActor

    worker = {"generator": "synthetic", "output_dir": str(tmp_path / "out"), "synthetic_steps": 1,
              "synthetic_step_delay_s": 0.0, "synthetic_width": 64, "synthetic_height": 48}
    actor = GenerationActor("gpu-0", {"name": "gpu", "generator": "synthetic"}, worker, None)
    actor.generator = RecordingGenerator(steps=1, step_delay_s=0.0, fps=4, width=64, height=48)
    base = {"job_id": 1, "prompt": "a kite", "resolution": "384p", "duration_s": 5, "seed": 1, "image": None}
    assert actor.run({**base, "negative_prompt": "low quality, fog"})["status"] == "ok"
    assert actor.run({**base, "job_id": 2})["status"] == "ok"  # a task from an older dispatcher
    assert [r.negative_prompt for r in actor.generator.requests] == ["low quality, fog", None]


# ------------------------------------------------------------------------------------------------ /重来
@async_test
async def test_again_repeats_the_request_with_a_new_seed_and_charges_again(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, **ROOMY))
    await h.say(image=png_bytes((96, 64)), **ALICE)
    await h.say("/视频 风格=动漫 种子=7 小猫伸懒腰 不要=fog", **ALICE)
    await h.say("/重来", **ALICE)
    first, again = h.jobs("wxid_alice")
    assert "重做 #" in h.last_text() and f"#{again.id}" in h.last_text()
    same = ("prompt", "final_prompt", "negative_prompt", "resolution", "duration_s", "image_path", "cost")
    assert all(getattr(again, f) == getattr(first, f) for f in same)
    assert first.image_path and again.seed != first.seed == 7
    assert spends(h) == [-first.cost, -first.cost]
    # someone else's job: not found for a user, fine for an admin (charged to the admin)
    await h.say(f"/重来 #{first.id}", **BOB)
    assert f"没有找到你的任务 #{first.id}" in h.last_text()
    assert_uncharged(h, "wxid_bob")
    await h.say(f"/重来 #{first.id}", sender_id=ADMIN, sender_name="Admin")
    [admin_job] = h.jobs(ADMIN)
    assert admin_job.prompt == first.prompt and spends(h, ADMIN) == [-first.cost]
    await h.say("/重来 #999", **ALICE)
    assert "没有找到你的任务 #999" in h.last_text()
    await h.say("/重来 第二个", **ALICE)
    assert "用法" in h.last_text()
    await h.say("/重来", **CAROL)
    assert "还没有生成过视频" in h.last_text()
    Path(first.image_path).unlink()  # retention removed the image
    await h.say(f"/重来 #{first.id}", **ALICE)
    assert "图片已经不保存" in h.last_text()
    assert len(h.jobs("wxid_alice")) == 2 and len(spends(h)) == 2


# ------------------------------------------------------------------------------------------------ /我的视频, /发送
@async_test
async def test_mine_lists_the_last_five_jobs_and_resend_says_when_the_video_is_gone(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, **ROOMY))
    run = runner(h, tmp_path)
    await h.say("/视频 the first one", **ALICE)
    done = run.run_once()
    assert done is not None and done.state is JobState.SUCCEEDED
    h.queue.mark_delivered(done.id)
    for n in range(2, 7):
        await h.say(f"/视频 job number {n}", **ALICE)
    await h.say("/取消", **ALICE)  # the newest is cancelled
    await h.say("/我的视频", **ALICE)
    lines = h.last_text().split("\n")
    assert lines[0].endswith("你最近的 5 个视频：")
    ids = [j.id for j in h.jobs("wxid_alice")]
    assert [line.split()[0] for line in lines[1:6]] == [f"#{i}" for i in reversed(ids[1:])]
    assert "已取消" in lines[1] and "排队中" in lines[2] and "今天 08:00" in lines[1]
    assert "/发送" in lines[-1] and "/重来" in lines[-1]
    # the delivered one is sent again while its file is there ...
    await h.say(f"/发送 #{done.id}", **ALICE)
    assert h.channel.sent[-1].video is not None
    # ... and says clearly when retention removed it
    Path(done.video_path or "").unlink()
    await h.say(f"/发送 #{done.id}", **ALICE)
    assert f"任务 #{done.id} 的视频已经不保存了" in h.last_text() and "30 天" in h.last_text()
    assert f"/重来 #{done.id}" in h.last_text()
    await h.say("/我的视频", **BOB)
    assert "还没有生成过视频" in h.last_text()


# ------------------------------------------------------------------------------------------------ /续写
def _frames(path: str | Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


@async_test
async def test_continue_starts_from_the_last_frame_and_merge_joins_the_clips(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, **ROOMY))
    run = runner(h, tmp_path)
    await h.say("/视频 10秒 a red fox in the snow", **ALICE)
    parent = run.run_once()
    assert parent is not None and parent.state is JobState.SUCCEEDED
    await h.say(f"/续写 #{parent.id} the fox jumps 风格=像素", **ALICE)
    child = h.jobs("wxid_alice")[-1]
    assert "续写任务" in h.last_text()
    assert (child.parent_id, child.merge, child.resolution, child.duration_s) == (parent.id, False, "384p", 10)
    assert child.prompt == "the fox jumps" and child.final_prompt.endswith(h.settings.prompts.styles["像素"].text)
    assert child.image_path and Path(child.image_path).is_file()
    last = _frames(parent.video_path or "")[-1]
    start = np.asarray(Image.open(child.image_path).convert("RGB"))
    assert start.shape == last.shape and np.abs(start.astype(int) - last.astype(int)).mean() < 1.0
    assert spends(h) == [-parent.cost, -parent.cost]  # one job, charged once
    made = run.run_once()
    assert made is not None and made.state is JobState.SUCCEEDED and Path(made.video_path or "").name == "video.mp4"
    # 合并 without a prompt: the parent's prompt goes on; the result is one MP4, labels kept
    await h.say(f"/续写 #{parent.id} 合并", **ALICE)
    merged_job = h.jobs("wxid_alice")[-1]
    assert merged_job.merge and merged_job.prompt == parent.prompt
    merged = run.run_once()
    assert merged is not None and merged.state is JobState.SUCCEEDED
    assert Path(merged.video_path or "").name == "merged.mp4" and f"已接在 #{parent.id} 后面" in merged.label
    n_parent = probe(Path(parent.video_path or ""))["frames"]
    assert probe(Path(merged.video_path or ""))["frames"] == 2 * n_parent - 1  # the shared frame once
    assert read_aigc(Path(merged.video_path or "")) is not None  # the implicit label survives the join
    assert spends(h) == [-parent.cost] * 3


@async_test
async def test_continue_refusals_are_clear_and_charge_nothing(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, **ROOMY))
    run = runner(h, tmp_path)
    await h.say("/视频 a red fox", **ALICE)
    parent = run.run_once()
    assert parent is not None
    await h.say("/视频 still waiting", **ALICE)
    queued = h.jobs("wxid_alice")[-1]
    before = len(spends(h))

    async def refused(text: str, *expected: str, who: dict[str, str] = ALICE) -> None:
        await h.say(text, **who)
        reply = h.last_text()
        assert all(e in reply for e in expected), reply

    await refused("/续写", "用法")
    await refused("/续写 #999 go on", "没有找到你的任务 #999")
    await refused(f"/续写 #{parent.id} go on", f"没有找到你的任务 #{parent.id}", who=BOB)
    await refused(f"/续写 #{queued.id} go on", "还没有生成好", "没有扣额度")
    await refused(f"/续写 #{parent.id} 风格=蒸汽波 go on", "没有「蒸汽波」这个风格")
    await refused(f"/续写 #{parent.id} go on 不要=" + "x" * 201, "太长")
    Path(parent.video_path or "").unlink()
    await refused(f"/续写 #{parent.id} go on", "已经不保存", "没法续写")
    assert len(spends(h)) == before and len(h.jobs("wxid_alice")) == 2
    assert_uncharged(h, "wxid_bob")


# ------------------------------------------------------------------------------------------------ playground quote
def test_playground_quote_animates_the_quoted_picture_not_the_latest(tmp_path: Path) -> None:
    from tests.test_playground_web import MING, web_app

    def upload(colour: tuple[int, int, int]) -> tuple[str, bytes, str]:
        return ("p.png", png_bytes((96, 64), colour), "image/png")

    with web_app(tmp_path) as web:
        assert web.say(MING, "", image=upload((220, 30, 30))).json()["ok"]
        assert web.say(MING, "", image=upload((30, 30, 220))).json()["ok"]  # the latest picture is blue
        red = next(e for e in web.channel.events() if e.image_url).image_url or ""
        quote = red.rsplit("/", 1)[-1]
        sent = web.client.post("/api/send", data={"user_id": MING, "text": "/视频 风格=动漫 it moves",
                                                  "quote": quote})
        assert sent.json()["ok"], sent.text
        [job] = web.queue.jobs_of(MING)
        assert job.image_path and job.final_prompt.endswith(web.settings.prompts.styles["动漫"].text)
        r, _, b = np.asarray(Image.open(job.image_path).convert("RGB")).mean(axis=(0, 1))
        assert r > 150 and b < 100  # the quoted (red) picture, not the latest (blue) one
        event = next(e for e in reversed(web.channel.events()) if e.kind == "user")
        assert event.quote_url == red and event.image_url is None
        bad = web.client.post("/api/send", data={"user_id": MING, "text": "/视频 x", "quote": "img-00000000-9"})
        assert bad.status_code == 400 and bad.json()["field"] == "quote"
        assert len(web.queue.jobs_of(MING)) == 1
