"""Reading a sweep back into a privacy-utility plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.errors import FedCRMError
from fedcrm.sweeps import privacy_utility_plot


def _run(path: Path, auc: float, eps: float | None) -> None:
    path.mkdir(parents=True)
    per_branch = {} if eps is None else {"b1": {"epsilon": eps}, "b2": {"epsilon": eps * 0.9}}
    summary = {
        "final": {"auc": auc},
        "privacy": {"mode": "dp" if eps else "none", "per_branch": per_branch},
    }
    (path / "summary.json").write_text(json.dumps(summary))


def test_privacy_utility_plot_from_a_sweep(tmp_path: Path) -> None:
    for i, (eps, auc) in enumerate([(1.0, 0.80), (4.0, 0.84), (8.0, 0.85)]):
        _run(tmp_path / "sweep" / str(i), auc, eps)
    _run(tmp_path / "sweep" / "nonprivate", 0.86, None)
    assert main(["plot", "privacy-utility", str(tmp_path / "sweep")]) == 0
    png = tmp_path / "sweep" / "privacy_utility.png"
    assert png.stat().st_size > 5000
    points = json.loads((tmp_path / "sweep" / "privacy_utility.json").read_text())
    assert [p["epsilon"] for p in points["points"]] == [1.0, 4.0, 8.0]
    assert points["non_private_auc"] == 0.86


def test_no_dp_runs_is_a_clear_error(tmp_path: Path) -> None:
    _run(tmp_path / "only", 0.8, None)
    with pytest.raises(FedCRMError, match="no DP run"):
        privacy_utility_plot(tmp_path)
