"""Reading a sweep back into a privacy-utility plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedcrm.cli import main
from fedcrm.config import RunConfig
from fedcrm.errors import FedCRMError
from fedcrm.plots._figure import plt
from fedcrm.plots.privacy_utility import privacy_utility_figure, privacy_utility_plot


def _run(
    path: Path,
    auc: float,
    eps: float | None,
    *,
    rounds: int = 5,
    deltas: tuple[float, float] = (1e-5, 1e-5),
    config: bool = True,
) -> None:
    path.mkdir(parents=True)
    per_branch = (
        {}
        if eps is None
        else {
            "b1": {"epsilon": eps, "delta": deltas[0]},
            "b2": {"epsilon": eps * 0.9, "delta": deltas[1]},
        }
    )
    summary = {
        "model": "lstm",
        "rounds": rounds,
        "final": {"auc": auc},
        "privacy": {"mode": "dp" if eps else "none", "per_branch": per_branch},
    }
    (path / "summary.json").write_text(json.dumps(summary))
    if config:
        cfg = RunConfig.model_validate(
            {
                "privacy": {"mode": "dp" if eps else "none", "target_epsilon": eps},
                "federation": {"rounds": rounds},
                "output_dir": str(path),
            }
        )
        (path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))


def test_privacy_utility_plot_from_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for i, (eps, auc) in enumerate([(1.0, 0.80), (4.0, 0.84), (8.0, 0.85)]):
        _run(tmp_path / "sweep" / str(i), auc, eps)
    _run(tmp_path / "sweep" / "nonprivate", 0.86, None)
    assert main(["plot", "privacy-utility", str(tmp_path / "sweep")]) == 0
    png = tmp_path / "sweep" / "privacy_utility.png"
    assert png.stat().st_size > 5000
    points = json.loads((tmp_path / "sweep" / "privacy_utility.json").read_text())
    assert [p["epsilon"] for p in points["points"]] == [1.0, 4.0, 8.0]
    assert points["non_private_auc"] == 0.86
    # Runs that differ only in epsilon (and where they were written): nothing to warn about.
    assert points["warnings"] == []
    assert "warning:" not in capsys.readouterr().err
    assert points["title"].startswith("lstm, 5 rounds")
    assert "δ = 1e-05" in points["xlabel"]


def test_ticks_are_plain_numbers_at_the_swept_epsilons() -> None:
    fig = privacy_utility_figure([(1.0, 0.8), (2.0, 0.82), (3.0, 0.83), (8.0, 0.85)])
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        assert list(ax.get_xticks()) == [1.0, 2.0, 3.0, 8.0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "8"]
        assert list(ax.xaxis.get_minor_locator()()) == []  # no 2x10^0, 3x10^0 ...
    finally:
        plt.close(fig)


def test_runs_differing_beyond_epsilon_are_named_and_deltas_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "eps"
    _run(sweep / "0", 0.80, 1.0, rounds=3, deltas=(1e-6, 1e-5))
    _run(sweep / "1", 0.84, 4.0, rounds=3, deltas=(1e-6, 1e-5))
    _run(sweep / "nonprivate", 0.86, None, rounds=5)
    assert main(["plot", "privacy-utility", str(sweep)]) == 0

    written = json.loads((sweep / "privacy_utility.json").read_text())
    assert written["warnings"] == [
        "the runs differ in federation.rounds: 3 in 0/, 1/; 5 in nonprivate/"
    ]
    assert "warning: the runs differ in federation.rounds" in capsys.readouterr().err
    assert "δ 1e-06 to 1e-05" in written["xlabel"]
    assert written["title"].startswith("lstm, 3 rounds")
    assert written["points"][0]["delta"] == [1e-6, 1e-5]


def test_runs_without_config_are_said_to_be_unchecked(tmp_path: Path) -> None:
    _run(tmp_path / "a", 0.8, 1.0, config=False)
    result = privacy_utility_plot(tmp_path)
    assert result.warnings == ["no readable config.yaml in a/: their settings were not compared"]


def test_no_dp_runs_is_a_clear_error(tmp_path: Path) -> None:
    _run(tmp_path / "only", 0.8, None)
    with pytest.raises(FedCRMError, match="no DP run"):
        privacy_utility_plot(tmp_path)
