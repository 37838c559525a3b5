"""Root settings: YAML + XIAOAI__ environment overrides, strict keys, secrets only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, env_overrides, load_settings

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_config_yaml_is_valid_and_documented_defaults_match() -> None:
    settings = load_settings(REPO / "config.yaml", environ={})
    defaults = Settings()
    # config.yaml documents the defaults: it must not drift from the models
    assert settings.model_dump() == defaults.model_dump()
    assert settings.bot.image_window_s == defaults.bot.image_window_s == 300
    assert settings.quota.reset_time == "00:00"
    assert settings.quota.timezone == "Asia/Shanghai"
    assert settings.video.default_resolution in settings.video.resolutions


def test_empty_file_and_missing_default_file_give_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(write(tmp_path, ""), environ={}) == Settings()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").unlink()
    assert load_settings(environ={}) == Settings()


def test_explicit_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_env_overrides_nest_and_parse_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, "quota:\n  daily: 3\nbot:\n  name: 小爱\n")
    env = {
        "XIAOAI__QUOTA__DAILY": "5",
        "XIAOAI__BOT__ADMINS": "[wxid_admin, wxid_two]",
        "XIAOAI__BOT__REQUIRE_MENTION_IN_GROUPS": "true",
        "UNRELATED": "x",
    }
    settings = load_settings(path, environ=env)
    assert settings.quota.daily == 5
    assert settings.bot.admins == ["wxid_admin", "wxid_two"]
    assert settings.bot.require_mention_in_groups is True
    assert settings.bot.name == "小爱"
    assert env_overrides({"XIAOAI__A__B__C": "1"}) == {"a": {"b": {"c": 1}}}


def test_unknown_key_fails_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, "bot:\n  admin_list: [x]\n"), environ={})
    assert "bot.admin_list" in str(info.value)
    assert "unknown key" in str(info.value)
    with pytest.raises(SettingsError, match="nonsense"):
        load_settings(write(tmp_path, "nonsense: 1\n"), environ={})


def test_unknown_key_from_environment_fails_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, ""), environ={"XIAOAI__QUOTA__DAILLY": "4"})
    assert "quota.dailly" in str(info.value)


def test_bad_values_fail_naming_the_path(tmp_path: Path) -> None:
    cases = {
        "quota:\n  daily: lots\n": "quota.daily",
        "quota:\n  reset_time: '25:00'\n": "quota.reset_time",
        "quota:\n  timezone: Mars/Olympus\n": "quota.timezone",
        "bot:\n  image_window_s: -1\n": "bot.image_window_s",
        "video:\n  resolutions: ['1080p']\n": "video.resolutions",
        "video:\n  default_duration_s: 7\n  durations_s: [5, 10]\n": "video",
    }
    for text, key in cases.items():
        with pytest.raises(SettingsError) as info:
            load_settings(write(tmp_path, text), environ={})
        assert key in str(info.value), (text, str(info.value))


def test_not_a_mapping_and_bad_yaml_fail(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), environ={})
    with pytest.raises(SettingsError, match="YAML"):
        load_settings(write(tmp_path, "bot: [unclosed\n"), environ={})


def test_secrets_are_refused_in_the_file_and_in_xiaoai_overrides(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, "wechaty:\n  token: abc\n"), environ={})
    assert "wechaty.token" in str(info.value)
    assert "environment" in str(info.value)
    with pytest.raises(SettingsError, match="wechaty.token"):
        load_settings(write(tmp_path, ""), environ={"XIAOAI__WECHATY__TOKEN": "abc"})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "quota:\n  daily: 9\n")
    assert load_settings(environ={"XIAOAI_CONFIG": str(path)}).quota.daily == 9


def test_video_resolutions_must_include_what_the_checkpoint_makes(tmp_path: Path) -> None:
    text = "video:\n  resolutions: ['384p']\n  default_resolution: 384p\ngeneration:\n  checkpoint: /models/pf\n  variant: 768p\n"
    with pytest.raises(SettingsError, match="generation.variant"):
        load_settings(write(tmp_path, text), environ={})
    # the tiny random model (no checkpoint) makes both
    assert load_settings(write(tmp_path, "video:\n  resolutions: ['384p']\n"), environ={}).supported_resolutions() == ["384p"]
