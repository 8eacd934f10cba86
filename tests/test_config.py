"""Composing and validating the run configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedcrm.cli.simulate import check_overrides as _check_overrides
from fedcrm.config import compose, validate_config
from fedcrm.errors import ConfigError


def test_defaults_compose_to_a_typed_frozen_config() -> None:
    cfg = compose()
    assert cfg.model.name == "lstm"
    assert cfg.data.kind == "synthetic"
    assert cfg.privacy.mode == "none"
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_overrides_reach_the_typed_config() -> None:
    cfg = compose(
        [
            "federation.rounds=7",
            "data.branches=3",
            "task.cutoff=2024-06-30",
            "privacy=dp",
            "privacy.target_epsilon=2",
            "model=gbdt",
            "model.max_depth=3",
        ]
    )
    assert cfg.federation.rounds == 7
    assert cfg.data.branches == 3  # type: ignore[union-attr]
    assert str(cfg.task.cutoff) == "2024-06-30"
    assert cfg.privacy.dp and not cfg.privacy.he
    assert cfg.model.max_depth == 3  # type: ignore[union-attr]


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"federation\.rounds"):
        compose(["federation.rounds=0"])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"valid keys here: .*local_epochs"):
        validate_config({"federation": {"roundz": 3}})
    with pytest.raises(ConfigError, match=r"valid keys under `federation`: .*rounds"):
        _check_overrides(["federation.roundz=3"])
    with pytest.raises(ConfigError, match=r"valid top-level keys"):
        _check_overrides(["sed=3"])


def test_unknown_group_option_lists_choices() -> None:
    with pytest.raises(ConfigError, match="Available options"):
        compose(["data=nosuch"])


def test_dp_needs_exactly_one_noise_source() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        compose(["privacy=dp", "privacy.noise_multiplier=1.0"])
    cfg = compose(["privacy=dp", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.1"])
    assert cfg.privacy.noise_multiplier == 1.1


def test_branch_ceilings_per_branch_override() -> None:
    fixed = _check_overrides(["branch.epsilon_ceilings.b1=3", "branch.epsilon_ceiling=5"])
    cfg = compose(fixed)
    assert cfg.branch.ceiling_for("b1") == 3.0
    assert cfg.branch.ceiling_for("b2") == 5.0
    with pytest.raises(ConfigError):
        compose(["branch.epsilon_ceiling=-1"])


def test_gbdt_dp_preset_is_a_batched_gbdt() -> None:
    cfg = compose(["model=gbdt_dp", "privacy=dp"])
    assert cfg.model.name == "gbdt"
    assert cfg.model.mode == "batched" and cfg.model.reg_lambda == 100.0  # type: ignore[union-attr]
