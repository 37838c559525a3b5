"""The first hour of a new user in the chat (issue items 2 and 10), through the real dispatcher, plugins,
QuotaBook and JobQueue on a real SQLite file: only what the model makes is offered and accepted; failure
notes @-mention and end with one full stop; an image and its caption make one job; typos get the nearest
command; admins read names and Chinese; acks are short and say 你; ETAs are per model and honest."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bot.delivery import DeliveryLoop, cancelled_text, failure_text, uncertain_text
from bot.executors.base import PoolView
from bot.executors.status import ActorStatus
from bot.settings import Settings, config_source
from plugins.pool import device_text, format_pool
from plugins.quota import audit_text, reason_text
from tests.chat_harness import ADMIN, ROOM, async_test, make_harness, make_settings, png_bytes

ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice"}
BOB = {"sender_id": "wxid_bob", "sender_name": "Bob"}
ADMIN_MSG = {"sender_id": ADMIN, "sender_name": "群主"}
PRIVATE = {"sender_id": "wxid_p", "sender_name": "P", "group": False}
TINY = {"worker": {"generator": "pyramid_flow"}}  # the default model: tiny weights, 384p and 768p
REAL_384 = {"worker": {"generator": "pyramid_flow"}, "generation": {"checkpoint": "/models/pf", "variant": "384p"}}


def spends(h, user: str = "wxid_alice") -> list[int]:
    return [r.delta for r in h.ledger(user) if r.kind == "spend"]


# ----------------------------------------------------------------------------- item 2: what is offered
def test_settings_know_what_the_model_makes(tmp_path: Path) -> None:
    tiny = make_settings(tmp_path, **TINY)
    assert tiny.offered() == [("384p", 5), ("768p", 5), ("768p", 10)] and not tiny.serves("384p", 10)
    real = make_settings(tmp_path, **REAL_384)
    assert real.offered() == [("384p", 5)]
    synthetic = make_settings(tmp_path)
    assert synthetic.serves("384p", 10)  # the synthetic generator makes everything
    with pytest.raises(ValueError, match="durations_s"):
        make_settings(tmp_path, video={"durations_s": [10], "default_duration_s": 10}, **REAL_384)


@async_test
async def test_quota_help_and_usage_offer_only_what_the_model_makes(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, **TINY))
    await h.say("/额度", **ALICE)
    costs = h.last_text().splitlines()[-1]
    assert "384p 5秒" in costs and "768p 10秒" in costs and "384p 10秒" not in costs
    await h.say("/帮助", **ALICE)
    assert "/视频 768p 10秒" in h.last_text()

    real = await make_harness(make_settings(tmp_path / "real", **REAL_384))
    await real.say("/额度", **ALICE)
    assert real.last_text().splitlines()[-1] == "费用：384p 5秒 1 点"
    await real.say("/帮助", **ALICE)
    text = real.last_text()
    assert "10秒" not in text and "768p" not in text and "/视频 384p 5秒" in text
    assert "/视频 [种子=N] [-原文] 提示词" in text


@async_test
async def test_unsupported_combination_is_refused_at_once_with_the_nearest(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, quota={"daily": 10}, **TINY))
    for text in ("/视频 10秒 一只猫", "/视频 384p 10秒 一只猫", "/视频 -图 10秒 一只猫"):
        await h.say(text, **ALICE)
        reply = h.last_text()
        assert "384p 只能生成 5 秒的视频" in reply and "10 秒请用 768p（6 点）：/视频 768p 10秒 一只猫" in reply, reply
    assert h.jobs("wxid_alice") == [] and spends(h) == []
    await h.say("/视频 768p 10秒 一只猫", **ALICE)
    assert [(j.resolution, j.duration_s) for j in h.jobs("wxid_alice")] == [("768p", 10)]

    real = await make_harness(make_settings(tmp_path / "real", **REAL_384))
    await real.say("/视频 10秒 一只猫", **ALICE)
    assert "384p 只能生成 5 秒的视频。请这样发：/视频 384p 5秒 一只猫" in real.last_text()
    assert real.jobs("wxid_alice") == []


@async_test
async def test_failure_notes_mention_and_end_with_one_full_stop(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/视频 一只狗", group=False, **BOB)
    for user in ("wxid_alice", "wxid_bob"):
        job = h.queue.claim("w", 60)
        assert job is not None and job.user_id == user
        h.queue.fail(job.id, "w", "384p 最长只能生成 5 秒左右的视频，请缩短时长。", retryable=False)
    await DeliveryLoop(h.queue, h.channel, h.settings, h.clock).deliver_pending()
    group_note, private_note = h.channel.sent[-2].text, h.channel.sent[-1].text
    assert group_note.text.startswith("@Alice ") and group_note.mention_ids == ("wxid_alice",)
    assert not private_note.text.startswith("@")
    for note in (group_note.text, private_note.text):
        assert "。。" not in note and "请缩短时长。\n" in note and "/视频" in note
    job = h.jobs("wxid_alice")[0]
    assert cancelled_text(job).startswith("@Alice ") and uncertain_text(job).startswith("@Alice ")
    assert "。。" not in failure_text(job)


# ----------------------------------------------------------------------------- item 10: chat rough edges
@async_test
async def test_a_waiting_video_and_an_image_with_caption_make_one_job(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, bot={"image_caption_wait_s": 0.3}))
    # the playground / WeChat way: the image and its caption are two messages
    await h.say("/视频", **ALICE)
    await h.say(image=png_bytes(), **ALICE)
    await h.say("/视频 一只猫在跑", **ALICE)
    await asyncio.sleep(0.6)
    [job] = h.jobs("wxid_alice")
    assert job.prompt == "一只猫在跑" and job.image_path and spends(h) == [-1]
    # a mixed message (image attached to the command, WeCom): the old waiting request is gone with it
    await h.say("/视频", **BOB)
    await h.say("/视频 海浪", image=png_bytes(), **BOB)
    await h.say(image=png_bytes(), **BOB)  # a later image is only remembered
    await asyncio.sleep(0.6)
    [bob_job] = h.jobs("wxid_bob")
    assert bob_job.prompt == "海浪" and bob_job.image_path and spends(h, "wxid_bob") == [-1]
    # no caption follows: the image makes the waiting request's job after the short wait
    await h.say("/视频", **ALICE)
    await h.say(image=png_bytes(), **ALICE)
    assert len(h.jobs("wxid_alice")) == 1
    await asyncio.sleep(0.6)
    assert len(h.jobs("wxid_alice")) == 2 and "默认动作描述" in h.last_text()


@async_test
async def test_typos_get_the_nearest_command(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视屏 一只猫", **PRIVATE)
    assert "你是想发 /视频 一只猫 吗" in h.last_text() and "/帮助" in h.last_text()
    await h.say("/视屏一只猫", **PRIVATE)
    assert "/视频 一只猫" in h.last_text()
    await h.say("/vidoe a cat", **PRIVATE)
    assert "/video a cat" in h.last_text()
    await h.say("/额", **PRIVATE)
    assert "/额度" in h.last_text()
    await h.say("/画画", **PRIVATE)
    assert "/帮助" in h.last_text() and "你是想" not in h.last_text()
    await h.say("/设置额 @x 5", **PRIVATE)  # admin commands are suggested to admins only
    assert "/设置额度" not in h.last_text()
    await h.say("/设置额 wxid_x 5", group=False, **ADMIN_MSG)
    assert "/设置额度" in h.last_text()
    before = len(h.channel.texts())
    await h.say("/视屏 一只猫", **ALICE)  # a group, not addressed: ignored as before
    assert len(h.channel.texts()) == before
    await h.say("@小爱 /视屏 一只猫", mentions_bot=True, **ALICE)
    assert "/视频 一只猫" in h.last_text()


@async_test
async def test_admin_views_show_names_and_chinese(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/视频 一只狗", **ALICE)
    await h.say("/取消", **ALICE)
    dog = h.jobs("wxid_alice")[0]
    await h.say("/加额度 @Alice 1 补偿", mentions=("wxid_alice",), **ADMIN_MSG)
    assert "已为 Alice（wxid_alice） 调整 +1 点" in h.last_text()
    await h.say("/封禁 @Alice 刷屏", mentions=("wxid_alice",), **ADMIN_MSG)
    await h.say("/解封 @Alice", mentions=("wxid_alice",), **ADMIN_MSG)
    await h.say(f"/取消 #{dog.id}", **ADMIN_MSG)
    await h.say("/流水 @Alice", mentions=("wxid_alice",), **ADMIN_MSG)
    ledger = h.last_text()
    assert ledger.startswith("@群主 Alice（wxid_alice） 的额度流水")
    for phrase in ("首次发放每日额度", "生成视频", "取消退还", "补偿", f"由 {ADMIN}"):
        assert phrase in ledger, (phrase, ledger)
    assert not re.search(r"cancelled|video job|first daily", ledger)
    await h.say("/审计", **ADMIN_MSG)
    audit = h.last_text()
    for phrase in ("给 Alice（wxid_alice） 加了 1 点，2 → 3 点，原因：补偿", "暂停了 Alice（wxid_alice） 使用视频生成，原因：刷屏",
                   "恢复了 Alice（wxid_alice） 使用视频生成", f"取消了 Alice（wxid_alice） 的任务 #{dog.id}（排队中）"):
        assert phrase in audit, (phrase, audit)
    assert "{" not in audit and "'" not in audit and " add " not in audit
    assert reason_text("delivery failed") == "发送失败退还" and reason_text("daily reset 2026-01-02") == "每日重置（2026-01-02）"
    assert audit_text("set", "B", {"before": 1, "after": 9, "reason": ""}) == "把 B 的额度设为 9 点（原来 1 点）"


@async_test
async def test_acks_are_short_and_replies_say_ni(tmp_path: Path) -> None:
    from bot.prompts import PromptPipeline, PromptSettings

    pipeline = PromptPipeline.from_settings(PromptSettings(translator="none", fallback=[]), environ={})
    h = await make_harness(make_settings(tmp_path, quota={"daily": 2}, queue={"max_pending_per_user": 2}),
                           pipeline=pipeline)
    await h.say("/视频 一只柴犬在雪地里奔跑", **ALICE)  # untranslated: a warning and the model prompt
    await h.say(image=png_bytes(), **ALICE)
    await h.say("/视频", **ALICE)  # image-to-video with the default motion prompt
    acks = [t for t in h.channel.texts() if "收到！" in t]
    assert len(acks) == 2 and all(len(a.splitlines()) <= 3 for a in acks), acks
    for text in ("/视频 一只猫", "/额度", "/队列", "/取消 #99", "/发送 #99", "/帮助"):
        await h.say(text, **ALICE)
    await h.say("/取消", **BOB)
    h.quota.ban(ADMIN, "wxid_bob")
    await h.say("/视频 一只猫", **BOB)
    assert all("您" not in t for t in h.channel.texts()), [t for t in h.channel.texts() if "您" in t]
    sources = [*Path("plugins").glob("*.py"), Path("bot/delivery.py"), Path("bot/ratelimit.py"),
               Path("bot/dispatcher.py"), Path("bot/router.py"), Path("bot/plugin.py")]
    assert [str(p) for p in sources if "您" in p.read_text(encoding="utf-8")] == []


@async_test
async def test_eta_follows_the_model_and_says_when_it_is_a_guess(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, quota={"daily": 10}))
    await h.say("/视频 一只猫", **ALICE)
    first = h.last_text().splitlines()[0]
    assert "预计约 3 秒后完成（还没有实际耗时数据）" in first and "分钟" not in first
    job = h.queue.claim("w", 60)
    h.clock.advance(2)
    h.queue.complete(job.id, "w", "/tmp/x.mp4", None, 2.0, "")
    # a slow run of another model on this database does not slow the synthetic estimate down
    other = h.queue.submit(_spec("m-other", "tiny"))
    h.queue.claim("w", 60)
    h.clock.advance(500)
    h.queue.complete(other.job.id, "w", "/tmp/y.mp4", None, 500.0, "")
    await h.say("/视频 一只狗", **ALICE)
    first = h.last_text().splitlines()[0]
    assert "预计 2 秒后完成" in first and "约" not in first and "还没有" not in first
    await h.say("/队列", **ALICE)
    assert "预计 2 秒后完成" in h.last_text()


def _spec(message_id: str, model: str):
    from bot.jobs.models import JobSpec

    return JobSpec(message_id=message_id, user_id="wxid_z", user_name="Z", chat_id=ROOM, chat_kind="group",
                   group_id=ROOM, prompt="x", final_prompt="x", resolution="384p", duration_s=5, seed=1,
                   image_path=None, cost=1, model=model)


@async_test
async def test_help_lists_by_importance_and_pool_only_with_ray(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/帮助", **ADMIN_MSG)
    text = h.last_text()
    order = [text.index(f"\n{w}") for w in ("/视频", "/队列", "/取消", "/额度", "/发送", "/帮助")]
    assert order == sorted(order), text
    assert "/资源池" not in text and "/设置额度" in text
    ray = await make_harness(make_settings(tmp_path / "ray", executor={"kind": "ray"}))
    await ray.say("/帮助", **ADMIN_MSG)
    assert "/资源池" in ray.last_text()


@async_test
async def test_bad_options_are_refused_with_the_right_form(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    for text, form in (("/视频 种子=abc 一只猫", "种子=7"), ("/video a cat seed=x", "种子=7"),
                       ("/视频 一只猫 3分钟", "5秒")):
        await h.say(text, **ALICE)
        assert form in h.last_text() and "用法：/视频" in h.last_text(), h.last_text()
    assert h.jobs("wxid_alice") == [] and spends(h) == []


def test_cpu_runs_are_not_labelled_gpu() -> None:
    assert device_text("cpu") == "CPU" and device_text("cuda:1") == "GPU 1" and device_text("0,1") == "GPU 0,1"
    assert "GPU" not in device_text("")
    actor = ActorStatus(name="w", incarnation=0, state="idle", gpu="cpu", model="synthetic")
    text = format_pool(PoolView(kind="local", cluster=None, actors=[actor]), 0.0, {})
    assert "CPU" in text and "GPU" not in text


def test_config_source_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    line = config_source(None, environ={})
    assert "没有找到配置文件 config.yaml" in line and str(tmp_path) in line and "内置默认值" in line
    assert main(["config"]) == 0
    assert capsys.readouterr().out.startswith(f"# {line}\n")
    assert main(["run"]) == 2  # no channel configured; the first line says where the settings came from
    assert capsys.readouterr().err.splitlines()[0].startswith("没有找到配置文件 config.yaml")
    (tmp_path / "config.yaml").write_text("quota:\n  daily: 4\n", encoding="utf-8")
    assert config_source(None, environ={"XIAOAI__BOT__NAME": "x"}) == (
        f"配置文件 / config file: {tmp_path / 'config.yaml'} + 1 个 XIAOAI__* 环境变量 / environment overrides")
    assert isinstance(Settings(), Settings)
