"""The video plugin through the real dispatcher, QuotaBook and JobQueue (real SQLite file):
submit and ack, options, image-to-video pairing, every refusal (clear reply, nothing debited),
de-duplication, /cancel, /queue."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bot.jobs.models import JobState
from bot.messages import OutgoingText
from tests.chat_harness import ADMIN, ROOM, async_test, make_harness, make_settings, png_bytes

ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice"}
BOB = {"sender_id": "wxid_bob", "sender_name": "Bob"}


def spends(h, user: str = "wxid_alice") -> list[int]:
    return [r.delta for r in h.ledger(user) if r.kind == "spend"]


def assert_nothing_debited(h, user: str = "wxid_alice") -> None:
    assert h.jobs(user) == []
    assert spends(h, user) == []
    assert h.quota.balance(user) in (0, h.settings.quota.daily)


@async_test
async def test_text_to_video_is_queued_with_ack(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 384p 10秒 种子=7 一只柴犬在雪地里奔跑", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert (job.resolution, job.duration_s, job.seed, job.cost) == ("384p", 10, 7, 2)
    assert job.prompt == "一只柴犬在雪地里奔跑" and job.image_path is None
    assert job.chat_id == ROOM and job.group_id == ROOM and job.user_name == "Alice"
    assert job.state is JobState.QUEUED
    ack = h.last_text()
    assert "第 1 位" in ack and "预计" in ack and "剩余 1 点" in ack and f"#{job.id}" in ack
    sent = h.channel.sent[-1].text
    assert isinstance(sent, OutgoingText) and sent.mention_ids == ("wxid_alice",)
    assert spends(h) == [-2] and h.quota.balance("wxid_alice") == 1


@async_test
async def test_defaults_and_trailing_options(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/video a cat on a sofa seed=3 5s", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert (job.prompt, job.resolution, job.duration_s, job.seed) == ("a cat on a sofa", "384p", 5, 3)
    await h.say("/video a dog", **BOB)
    [bob_job] = h.jobs("wxid_bob")
    assert 0 <= bob_job.seed <= h.settings.video.max_seed
    assert "第 2 位" in h.last_text()


@async_test
async def test_refusals_say_why_and_debit_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, bot={"max_prompt_chars": 20}, video={"resolutions": ["384p"]})
    h = await make_harness(settings)
    cases = {
        "/视频 " + "猫" * 21: "太长",
        "/视频 768p 一只猫": "不支持 768p",
        "/视频 1080p 一只猫": "不支持 1080p",
        "/视频 7秒 一只猫": "不支持 7 秒",
        "/video seed=-5 a cat": "种子需要",
    }
    for text, reason in cases.items():
        before = len(h.channel.texts())
        await h.say(text, **ALICE)
        assert len(h.channel.texts()) == before + 1, text
        if reason is not None:
            assert reason in h.last_text(), (text, h.last_text())
            assert_nothing_debited(h)


@async_test
async def test_quota_exhausted_and_pending_limit_and_ban(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue={"max_pending_per_user": 10}, quota={"daily": 2})
    h = await make_harness(settings)
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/视频 一只狗", **ALICE)
    await h.say("/视频 一只鸟", **ALICE)
    refusal = h.last_text()
    assert "额度不足" in refusal and "剩余 0 点" in refusal and "重置" in refusal and "00:00" in refusal
    assert len(h.jobs("wxid_alice")) == 2 and spends(h) == [-1, -1]

    limited = await make_harness(make_settings(tmp_path / "b", queue={"max_pending_per_user": 1}))
    await limited.say("/视频 一只猫", **ALICE)
    await limited.say("/视频 一只狗", **ALICE)
    assert "已有 1 个任务" in limited.last_text()
    assert len(limited.jobs("wxid_alice")) == 1 and spends(limited) == [-1]

    limited.quota.ban("wxid_admin", "wxid_bob", reason="spam")
    await limited.say("/视频 一只猫", **BOB)
    assert "暂停使用" in limited.last_text()
    assert_nothing_debited(limited, "wxid_bob")


@async_test
async def test_duplicate_message_id_makes_one_job_and_one_debit(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    message = h.channel.make_message("/视频 一只猫", chat_id=ROOM, **ALICE)
    for _ in range(3):
        await h.channel.inject(message)
    assert len(h.jobs("wxid_alice")) == 1 and spends(h) == [-1]
    assert len(h.channel.texts()) == 1  # the redelivery is not acknowledged twice


@async_test
async def test_image_then_video_is_image_to_video(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say(image=png_bytes((96, 64), fmt="JPEG"), **ALICE)
    await h.say(image=png_bytes(), **BOB)  # someone else's image is never used for Alice
    assert h.channel.texts() == []  # images alone get no reply
    h.clock.advance(120)
    await h.say("/视频 海浪轻轻拍打沙滩", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.image_path is not None and "图生视频" in h.last_text()
    with Image.open(job.image_path) as img:
        assert img.format == "PNG" and img.size == (96, 64)
    assert Path(job.image_path).is_relative_to((tmp_path / "data").resolve())
    # the image is used once: the next request is text-to-video
    await h.say("/视频 一只猫", **ALICE)
    assert h.jobs("wxid_alice")[-1].image_path is None


@async_test
async def test_video_first_then_image(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频", **ALICE)
    assert "发送一张图片" in h.last_text()
    assert h.jobs("wxid_alice") == []
    await h.say(image=png_bytes(), **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.image_path and job.prompt == h.settings.video.default_motion_prompt
    assert "默认动作描述" in h.last_text()

    await h.say("/视频 -图 樱花飘落", **BOB)
    assert h.jobs("wxid_bob") == []
    await h.say(image=png_bytes(), **BOB)
    [bob_job] = h.jobs("wxid_bob")
    assert bob_job.prompt == "樱花飘落" and bob_job.image_path


@async_test
async def test_image_window_expires(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, bot={"image_window_s": 300}))
    await h.say(image=png_bytes(), **ALICE)
    h.clock.advance(301)
    await h.say("/视频 一只猫", **ALICE)
    assert h.jobs("wxid_alice")[0].image_path is None
    await h.say("/视频", **BOB)
    h.clock.advance(301)
    await h.say(image=png_bytes(), **BOB)
    assert h.jobs("wxid_bob") == []


@async_test
async def test_bad_images_are_refused_without_debit(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, bot={"max_image_bytes": 200_000}))
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")  # 25 Mpx in a few KB
    cases = [
        (b"this is not an image at all", "不是一张能打开的图片"),
        (png_bytes()[:40], "不是一张能打开的图片"),
        (bomb.getvalue(), "分辨率太高"),
        (png_bytes((8, 8)), "太小"),
        (png_bytes((400, 400)) + b"\0" * 300_000, "太大"),
    ]
    for data, reason in cases:
        await h.say(image=data, **ALICE)
        await h.say("/视频 一只猫", **ALICE)
        assert reason in h.last_text(), (reason, h.last_text())
        assert_nothing_debited(h)


@async_test
async def test_cancel_queued_refunds_and_queue_shows_positions(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/取消", **ALICE)
    assert "没有" in h.last_text()
    await h.say("/视频 一只狗", **BOB)
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/视频 一只鸟", **ALICE)
    await h.say("/队列", **ALICE)
    listing = h.last_text()
    assert "排队 3 个" in listing and "第 2 位" in listing and "一只猫" in listing and "一只狗" not in listing
    assert h.quota.balance("wxid_alice") == 1
    await h.say("/cancel", **ALICE)
    assert "已取消" in h.last_text() and "退还" in h.last_text()
    states = [j.state for j in h.jobs("wxid_alice")]
    assert states == [JobState.QUEUED, JobState.CANCELLED]
    assert h.quota.balance("wxid_alice") == 2
    assert [r.kind for r in h.ledger("wxid_alice")] == ["grant", "spend", "spend", "refund"]
    # a waiting image request is cancelled first
    await h.say("/视频", **ALICE)
    await h.say("/取消", **ALICE)
    assert "等待图片" in h.last_text()
    await h.say(image=png_bytes(), **ALICE)
    assert len(h.jobs("wxid_alice")) == 2


@async_test
async def test_cancel_by_number_own_jobs_and_admin_any_with_audit(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 一只狗", **BOB)
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/视频 一只鸟", **ALICE)
    dog = h.jobs("wxid_bob")[0]
    cat, bird = h.jobs("wxid_alice")
    await h.say("/取消 abc", **ALICE)
    assert "用法" in h.last_text()
    await h.say(f"/取消 #{dog.id}", **ALICE)  # not hers: nothing changes, and nothing is revealed
    assert "没有找到你的任务" in h.last_text() and h.queue.get(dog.id).state is JobState.QUEUED
    await h.say(f"/取消 ＃{cat.id}", **ALICE)  # not the latest, full-width #
    assert f"已取消任务 #{cat.id}" in h.last_text()
    assert [j.state for j in h.jobs("wxid_alice")] == [JobState.CANCELLED, JobState.QUEUED]
    await h.say(f"/取消 {cat.id}", **ALICE)
    assert "已经结束" in h.last_text()
    assert h.quota.audit_log(10) == []  # cancelling your own job is no admin action
    await h.say(f"/取消 #{dog.id}", sender_id=ADMIN, sender_name="群主")
    assert "Bob 的任务" in h.last_text() and h.queue.get(dog.id).state is JobState.CANCELLED
    audit = h.quota.audit_log(10)
    assert [(a.actor_id, a.action, a.target_id, a.detail["job_id"]) for a in audit] == [
        (ADMIN, "cancel", "wxid_bob", dog.id)]
    assert [r.kind for r in h.ledger("wxid_bob")] == ["grant", "spend", "refund"]
    assert h.queue.get(bird.id).state is JobState.QUEUED


# --- with the real prompt pipeline (bot.prompts), translator off so nothing leaves the machine ---

def prompt_pipeline():
    from bot.prompts import PromptPipeline, PromptSettings

    return PromptPipeline.from_settings(PromptSettings(translator="none", fallback=[]), environ={})


@async_test
async def test_final_prompt_is_stored_and_echoed(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path), pipeline=prompt_pipeline())
    await h.say("/video a cat sleeping on a windowsill", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.prompt == "a cat sleeping on a windowsill"
    assert job.final_prompt != job.prompt and job.final_prompt.lower().startswith("a cat sleeping")
    assert job.final_prompt in h.last_text()  # the user sees what the model gets


@async_test
async def test_raw_flag_sends_the_prompt_untouched(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path), pipeline=prompt_pipeline())
    await h.say("/video -raw a cat, exactly like this", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.final_prompt == job.prompt == "a cat, exactly like this"
    assert "模型提示词" not in h.last_text()


@async_test
async def test_refused_prompt_is_not_charged_and_not_echoed(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path), pipeline=prompt_pipeline())
    await h.say("/视频 一段 ｐｏｒｎ 视频", **ALICE)
    reply = h.last_text()
    assert "不扣额度" in reply or "无法生成" in reply
    assert "porn" not in reply.lower() and "ｐｏｒｎ" not in reply
    assert_nothing_debited(h)
    # a prompt given before its image is checked when the image arrives
    await h.say("/视频 -图 nude", **BOB)
    await h.say(image=png_bytes(), **BOB)
    assert "不扣额度" in h.last_text() or "无法生成" in h.last_text()
    assert_nothing_debited(h, "wxid_bob")


@async_test
async def test_resolutions_follow_the_configured_checkpoint(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        worker={"generator": "pyramid_flow"},
        generation={"checkpoint": str(tmp_path / "ckpt"), "variant": "768p"},
        video={"default_resolution": "384p"},
        quota={"daily": 10},
    )
    assert settings.supported_resolutions() == ["768p"]
    h = await make_harness(settings)
    await h.say("/视频 384p 一只猫", **ALICE)
    assert "不支持 384p" in h.last_text() and "768p" in h.last_text()
    await h.say("/视频 一只猫", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.resolution == "768p" and job.cost == 3
