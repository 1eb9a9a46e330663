"""Settings and configs validated on load, atomic writes, the run manifest."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from sftc_core import io
from sftc_core.configs import (
    CONFIG_DIR,
    ConfigError,
    ProfileConfig,
    SftConfig,
    load_sft_config,
    load_yaml_model,
)
from sftc_core.settings import load_settings
from sftc_platform.metadata import config_hash, manifest_metadata


def test_defaults_come_from_the_toy_profile(tmp_path):
    settings = load_settings(env={}, dotenv_path=tmp_path / "missing.env")
    assert settings.profile_name == "toy"
    assert settings.train_backend == "hf"
    assert settings.train_start_date == settings.profile.dates.train_start
    assert settings.train_end_date < settings.test_start_date <= settings.test_end_date
    assert settings.eodhd_api_key is None


def test_environment_overrides_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("TRAIN_START_DATE=2010-02-01\nTRAIN_BACKEND=nemo\nSFTC_DATA_DIR=from-dotenv\n")
    settings = load_settings(env={"TRAIN_BACKEND": "hf"}, dotenv_path=dotenv)
    assert settings.train_start_date == dt.date(2010, 2, 1)
    assert settings.train_backend == "hf"
    assert settings.data_dir == Path("from-dotenv").absolute()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TRAIN_START_DATE": "2010/01/01"}, ["TRAIN_START_DATE", "YYYY-MM-DD"]),
        ({"TRAIN_END_DATE": "2011-02-30"}, ["TRAIN_END_DATE", "calendar date"]),
        ({"TRAIN_BACKEND": "deepspeed"}, ["TRAIN_BACKEND", "hf, nemo"]),
        ({"SFTC_PROFILE": "huge"}, ["SFTC_PROFILE", "toy, full"]),
        ({"TRAIN_START_DATE": "2012-01-01", "TRAIN_END_DATE": "2011-01-01"}, ["TRAIN_START_DATE <= TRAIN_END_DATE"]),
    ],
)
def test_wrong_settings_name_the_variable_and_the_form(tmp_path, env, names):
    with pytest.raises(ConfigError) as err:
        load_settings(env=env, dotenv_path=tmp_path / "none")
    for name in names:
        assert name in str(err.value)


def test_the_key_never_prints(tmp_path):
    settings = load_settings(env={"EODHD_API_KEY": "sentinel-key-123"}, dotenv_path=tmp_path / "none")
    assert settings.eodhd_api_key.get_secret_value() == "sentinel-key-123"
    assert "sentinel-key-123" not in repr(settings)
    assert "sentinel-key-123" not in str(settings.eodhd_api_key)


def test_committed_configs_load():
    assert isinstance(load_sft_config(), SftConfig)
    for name in ("toy", "full"):
        assert load_settings(env={"SFTC_PROFILE": name}, dotenv_path=Path("/nonexistent/.env")).profile.name == name


def test_config_with_a_wrong_type_names_file_and_field(tmp_path):
    path = tmp_path / "toy.yaml"
    raw = (CONFIG_DIR / "profiles" / "toy.yaml").read_text().replace("max_steps: ", "max_steps: many # ")
    path.write_text(raw)
    with pytest.raises(ConfigError) as err:
        load_yaml_model(path, ProfileConfig)
    assert str(path) in str(err.value)
    assert "training.max_steps" in str(err.value)


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml_model(path, SftConfig)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"

    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.atomic_write_jsonl(target, rows())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.jsonl"
    io.atomic_write_jsonl(target, [{"a": 1}, {"a": 2}])
    io.atomic_write_jsonl(target, [{"b": "é"}])
    assert io.read_jsonl(target) == [{"b": "é"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_dir_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "ds"
    with io.atomic_dir(target) as tmp:
        (tmp / "one").write_text("1")
    with pytest.raises(ValueError):
        with io.atomic_dir(target) as tmp:
            (tmp / "two").write_text("2")
            raise ValueError("half-way")
    assert sorted(p.name for p in target.iterdir()) == ["one"]
    with io.atomic_dir(target) as tmp:
        (tmp / "three").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["three"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        io.read_jsonl(path)


def test_manifest_tracks_the_settings_read_and_the_code(tmp_path):
    """The config hash follows exactly the settings an asset reads: another training end date changes
    hf_splits' hash, not the backtest's; the manifest carries git state, the settings and package versions."""
    settings = load_settings(env={}, dotenv_path=tmp_path / "none")
    later = load_settings(env={"TRAIN_END_DATE": "2012-03-30"}, dotenv_path=tmp_path / "none")
    assert config_hash(settings, "hf_splits") != config_hash(later, "hf_splits")
    assert config_hash(settings, "backtest_report") == config_hash(later, "backtest_report")
    manifest = manifest_metadata(later, "hf_splits")["run_manifest"].value
    assert set(manifest) >= {"git_commit", "git_dirty", "config_hash", "settings", "packages"}
    assert manifest["settings"]["train_end_date"] == "2012-03-30" and manifest["packages"]["dagster"] != "not installed"
    json.dumps(manifest)
