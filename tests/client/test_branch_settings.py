"""Node-config parsing at the branch: clear errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.client.branch import BranchSettings
from fedcrm.errors import ConfigError


def test_valid_node_config(tmp_path: Path) -> None:
    s = BranchSettings.from_node_config(
        {"branch-id": "b1", "data-path": str(tmp_path), "epsilon-ceiling": "4", "delta": 1e-6}
    )
    assert s.branch_id == "b1" and s.epsilon_ceiling == 4.0 and s.delta == 1e-6


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"epsilon-ceiling": "lots"}, "`epsilon-ceiling` must be a number"),
        ({"epsilon-ceiling": "0"}, "`epsilon-ceiling` must be a finite number above 0"),
        ({"epsilon-ceiling": "nan"}, "`epsilon-ceiling`"),
        ({"delta": "1.5"}, "`delta`"),
        ({"signing-key": "/nonexistent/key"}, "`signing-key`"),
        ({"data-pth": "x"}, "unknown node-config key"),
    ],
)
def test_bad_node_config_names_the_setting(tmp_path: Path, extra: dict, match: str) -> None:
    nc = {"branch-id": "b1", "data-path": str(tmp_path), **extra}
    with pytest.raises(ConfigError, match=match):
        BranchSettings.from_node_config(nc)


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`data-path`"):
        BranchSettings.from_node_config({"branch-id": "b1", "data-path": str(tmp_path / "no")})
    with pytest.raises(ConfigError, match="`branch-id`"):
        BranchSettings.from_node_config({"data-path": str(tmp_path)})
