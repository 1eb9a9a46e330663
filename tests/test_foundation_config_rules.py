"""Every config validated at load, every profile, rules across fields included: the first error names the file,
the field, the value and the expected form, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import config_clone, edit_yaml

from sftc_core.configs import CONFIG_DIR, ConfigError, quantity_bytes
from sftc_core.settings import PROFILE_NAMES, load_settings


def _load_error(config_dir: Path, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env or {}, dotenv_path=config_dir / "none.env", config_dir=config_dir)
    return str(exc.value)


def test_every_profile_is_loaded_and_the_full_one_is_at_hand(tmp_path):
    settings = load_settings(env={}, dotenv_path=tmp_path / "none.env")
    assert set(settings.profiles) == set(PROFILE_NAMES)
    assert settings.profile is settings.profiles["toy"] and settings.full_profile.name == "full"
    assert settings.full_profile.model.reference_config == "models/deepseek-v3.json"
    assert settings.config_dir == CONFIG_DIR


# (file under configs/, the change, what the message must name)
FAULTS = {
    "training window ends before it starts": (
        "profiles/toy.yaml",
        lambda r: r["dates"].update(train_end="2009-06-30"),
        ["field 'dates.train_end'", "train_end 2009-06-30 < train_start 2010-01-01"],
    ),
    "test window inside the training window": (
        "profiles/full.yaml",
        lambda r: r["dates"].update(test_start="2020-01-02"),
        ["profiles/full.yaml", "field 'dates.test_start'", "test_start 2020-01-02 lies inside the training window"],
    ),
    "test window ends before it starts": (
        "profiles/toy.yaml",
        lambda r: r["dates"].update(test_end="2012-08-01"),
        ["field 'dates.test_end'", "test_end 2012-08-01 < test_start 2012-09-01"],
    ),
    "partitions reversed": (
        "profiles/toy.yaml",
        lambda r: r["partitions"].update(start="2013-01"),
        ["field 'partitions.end'", "end 2012-12 comes before start 2013-01"],
    ),
    "dates outside the partitions": (
        "profiles/toy.yaml",
        lambda r: r["partitions"].update(end="2012-10"),
        ["reach outside partitions.start..partitions.end 2010-01..2012-10", "cover the months 2010-01..2012-12"],
    ),
    "warmup as long as training": (
        "profiles/toy.yaml",
        lambda r: r["training"].update(warmup_steps=1200, max_steps=1200),
        ["field 'training.warmup_steps'", "warmup_steps 1200 must be below max_steps 1200"],
    ),
    "a learning rate that is no step size": (
        "profiles/toy.yaml",
        lambda r: r["training"].update(learning_rate=3.0),
        ["field 'training.learning_rate'", "3.0 is not a learning rate", "(got 3.0)"],
    ),
    "parse-rate threshold outside [0, 1]": (
        "eval_config.yaml",
        lambda r: r.update(min_parse_rate=50),
        ["eval_config.yaml", "field 'min_parse_rate'", "(got 50)"],
    ),
    "negative cost": (
        "backtest_config.yaml",
        lambda r: r.update(cost_bps=-5),
        ["backtest_config.yaml", "field 'cost_bps'", "greater than or equal to 0", "(got -5)"],
    ),
    "risk-free rate in percent": (
        "backtest_config.yaml",
        lambda r: r.update(risk_free_rate=5),
        ["field 'risk_free_rate'", "e.g. 0.05 for 5%"],
    ),
    "scores with the sign flipped": (
        "backtest_config.yaml",
        lambda r: r["scores"].update(STRONG_BUY=-1.0, STRONG_SELL=1.0),
        ["field 'scores'", "scores must run from STRONG_BUY down to STRONG_SELL", "STRONG_BUY -1"],
    ),
    "validation never reached": (
        "nemo/finetune.yaml",
        lambda r: r.update(val_check_interval=5000),
        ["field 'val_check_interval'", "5000 exceeds max_steps 1000"],
    ),
    "a node memory that is no size": (
        "cluster.yaml",
        lambda r: r["node_pools"]["gpu"].update(node_memory="2 TB"),
        ["cluster.yaml", "'2 TB' is not a size"],
    ),
    "a pod limit above the node": (
        "cluster.yaml",
        lambda r: r["node_pools"]["gpu"].update(node_memory="1Ti"),
        ["resources.limits.memory 1900Gi exceeds node_memory 1Ti"],
    ),
    "an input template without the thesis's facts": (
        "sft_config.yaml",
        lambda r: r["prompt"].update(input_template="{ticker} on {as_of_date} for {horizon_days}"),
        [
            "field 'prompt'",
            "prompt.input_template leaves out {facts} (the record's support)",
            "add {facts} to prompt.input_template, or name it in prompt.omit_fields",
        ],
    ),
    "a template slot no record fills": (
        "sft_config.yaml",
        lambda r: r["prompt"].update(input_template=r["prompt"]["input_template"] + "\n{sector}"),
        [
            "prompt.input_template has the slot {sector}, which nothing fills",
            "{ticker}, {as_of_date}, {horizon_days}, {facts}",
        ],
    ),
    "a field omitted that the template carries": (
        "sft_config.yaml",
        lambda r: r["prompt"].update(omit_fields={"ticker": "one ticker only"}),
        ["prompt.omit_fields says {ticker} is left out ('one ticker only'), but prompt.input_template carries it"],
    ),
    "a reference config that is not there": (
        "profiles/full.yaml",
        lambda r: r["model"].update(reference_config="models/deepseek-v4.json"),
        ["field 'model.reference_config'", "'models/deepseek-v4.json' is not a file"],
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_fails_at_load_naming_file_field_and_value(tmp_path, fault):
    config_dir = config_clone(tmp_path)
    name, change, expected = FAULTS[fault]
    edit_yaml(config_dir / name, change)
    message = _load_error(config_dir)
    assert message.startswith(str(config_dir / name.split("/")[0]))  # the file (or its folder, for profiles and nemo/)
    for text in expected:
        assert text in message, message
    assert "(got {" not in message  # the values that matter, not a dump of the section


def test_the_full_profile_fails_the_load_of_the_toy_one(tmp_path):
    """The GPU plan's profile is validated on the CPU node too: a broken full.yaml stops the nightly at once."""
    config_dir = config_clone(tmp_path)
    edit_yaml(config_dir / "profiles" / "full.yaml", lambda r: r["dates"].update(test_end="2024-01-01"))
    assert str(config_dir / "profiles" / "full.yaml") in _load_error(config_dir, {"SFTC_PROFILE": "toy"})


def test_quantities_are_kubernetes_sizes():
    assert (
        quantity_bytes("2Ti") == 2 * 2**40
        and quantity_bytes("512Gi") == 512 * 2**30
        and quantity_bytes("1.5T") == 1_500_000_000_000
    )
    with pytest.raises(ValueError, match="not a size"):
        quantity_bytes("lots")
