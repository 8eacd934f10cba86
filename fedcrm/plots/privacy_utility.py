"""AUC against epsilon over a sweep of runs (``fedcrm plot privacy-utility DIR``).

Every run directory under ``DIR`` with a ``summary.json`` is a point: the
largest epsilon any branch spent, and the run's final AUC; a run without
differential privacy is the reference line. The x axis is logarithmic with
plain ticks at the plotted epsilons; the axis label gives the runs' delta
(``privacy.per_branch.*.delta`` of the summaries: one value, or the range when
branches differ), and the title the model and its rounds (trees).

A curve means something only when the runs differ in their privacy level
alone. Each run's ``config.yaml`` is compared with the others' and every
setting that differs is reported as a warning (printed and written into the
JSON beside the plot), except:

* the privacy level the sweep varies: ``privacy.target_epsilon``,
  ``privacy.noise_multiplier``;
* how and where a run was executed, or which artefacts it wrote, none of
  which changes the model or its AUC: ``output_dir``, ``resume``,
  ``baseline``, ``release``, ``calibration``,
  ``federation.ray_address``, ``federation.num_cpus_per_branch``,
  ``federation.round_timeout``, ``federation.keep_warm_s``;
* for the reference run, the ``privacy`` and ``branch`` sections (it has no
  DP by definition).

``seed`` is compared: it draws the synthetic data, the branches' splits and
the model's initialisation, so runs of different seeds are not points of one
curve (average them per epsilon yourself). ``task.cutoff`` is compared as
resolved (the summary's ``cutoff``). A run that stopped early is reported too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedcrm.errors import FedCRMError

IGNORED_SETTINGS = frozenset(
    {
        "privacy.target_epsilon",
        "privacy.noise_multiplier",
        "output_dir",
        "resume",
        "baseline",
        "release",
        "calibration",
        "federation.ray_address",
        "federation.num_cpus_per_branch",
        "federation.round_timeout",
        "federation.keep_warm_s",
    }
)
"""Settings whose differences between runs are not reported (see the module docstring)."""
REFERENCE_IGNORED_SECTIONS = ("privacy.", "branch.")


@dataclass
class SweepRun:
    """One run of a sweep: where it is, its summary and its flattened settings."""

    path: Path
    name: str
    summary: dict[str, Any]
    settings: dict[str, Any] | None

    @property
    def auc(self) -> float | None:
        """The final pooled AUC."""
        return (self.summary.get("final") or {}).get("auc")

    @property
    def epsilon(self) -> float | None:
        """The largest epsilon any branch spent (None without DP)."""
        return spent_epsilon(self.summary)

    def deltas(self) -> list[float]:
        """The branches' deltas."""
        per_branch = (self.summary.get("privacy") or {}).get("per_branch") or {}
        return sorted({float(v["delta"]) for v in per_branch.values() if v.get("delta")})


@dataclass
class PrivacyUtility:
    """What :func:`privacy_utility_plot` wrote and found."""

    path: Path
    json_path: Path
    warnings: list[str] = field(default_factory=list)


def load_summaries(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``summary.json`` under ``runs_dir`` (a sweep directory or a parent of runs)."""
    found = []
    for path in sorted(runs_dir.rglob("summary.json")):
        try:
            found.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def spent_epsilon(summary: Mapping[str, Any]) -> float | None:
    """The largest epsilon any branch spent in a run (None for a non-private run)."""
    per_branch = (summary.get("privacy") or {}).get("per_branch") or {}
    values = [v.get("epsilon") for v in per_branch.values() if v.get("epsilon") is not None]
    return max(values) if values else None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _load_run(path: Path, summary: dict[str, Any], root: Path) -> SweepRun:
    settings = None
    config = path / "config.yaml"
    if config.is_file():
        try:
            loaded = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError):
            loaded = None
        if isinstance(loaded, dict):
            settings = _flatten(loaded)
            if summary.get("cutoff"):  # compare the cutoff as resolved
                settings["task.cutoff"] = str(summary["cutoff"])
    name = str(path.relative_to(root)) if path != root else path.name
    return SweepRun(path, name + "/", summary, settings)


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def setting_differences(runs: Sequence[SweepRun], *, reference: SweepRun | None) -> list[str]:
    """One line per setting whose value differs between runs (see the module docstring)."""
    compared = [r for r in runs if r.settings is not None]
    if reference is not None and reference.settings is not None:
        compared.append(reference)
    lines = []
    keys = sorted({k for r in compared for k in r.settings or {}})
    for key in keys:
        if key in IGNORED_SETTINGS:
            continue
        values: dict[str, list[str]] = {}
        for r in compared:
            if r is reference and key.startswith(REFERENCE_IGNORED_SECTIONS):
                continue
            values.setdefault(_shown((r.settings or {}).get(key)), []).append(r.name)
        if len(values) > 1:
            parts = "; ".join(f"{v} in {', '.join(names)}" for v, names in values.items())
            lines.append(f"the runs differ in {key}: {parts}")
    return lines


def sweep_warnings(runs: Sequence[SweepRun], *, reference: SweepRun | None) -> list[str]:
    """Why the points (and the reference line) may not be one curve; empty when they are."""
    everyone = [*runs, *([reference] if reference is not None else [])]
    warnings = setting_differences(runs, reference=reference)
    missing = [r.name for r in everyone if r.settings is None]
    if missing:
        warnings.append(
            f"no readable config.yaml in {', '.join(missing)}: their settings were not compared"
        )
    for r in everyone:
        stopped = r.summary.get("stopped_reason")
        if stopped or r.summary.get("status") == "stopped_early":
            warnings.append(f"{r.name} stopped early ({stopped}): its AUC is of a shorter run")
    return warnings


def _span(values: Sequence[Any]) -> str:
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return f"{distinct[0]}"
    return f"{distinct[0]}-{distinct[-1]}"


def model_and_rounds(runs: Sequence[SweepRun]) -> str:
    """``"lstm, 5 rounds"`` or ``"gbdt, 50 trees"`` (a range when the runs differ)."""
    models = [str(r.summary.get("model", "?")) for r in runs]
    rounds = [r.summary.get("rounds") for r in runs if r.summary.get("rounds") is not None]
    unit = "trees" if set(models) == {"gbdt"} else "rounds"
    done = f", {_span(rounds)} {unit}" if rounds else ""
    return f"{'/'.join(sorted(set(models)))}{done}"


def describe_runs(runs: Sequence[SweepRun]) -> tuple[str, str]:
    """``(title, x label)``: model and rounds (trees), and the delta(s) of the runs."""
    title = f"{model_and_rounds(runs)}: AUC against ε ({len(runs)} DP runs)"
    deltas = sorted({d for r in runs for d in r.deltas()})
    if not deltas:
        delta = "δ not recorded"
    elif len(deltas) == 1:
        delta = f"δ = {deltas[0]:.3g}"
    else:
        delta = f"δ {deltas[0]:.3g} to {deltas[-1]:.3g} (not one δ)"
    return title, f"ε spent (largest branch), {delta}"


def privacy_utility_figure(
    points: Sequence[tuple[float, float]],
    *,
    non_private_auc: float | None = None,
    title: str = "",
    xlabel: str = "ε spent per branch",
    reference_label: str = "non-private",
    warned: bool = False,
) -> Any:
    """AUC against epsilon (log axis, plain ticks at the points), non-private AUC as a line.

    ``warned`` adds a note on the plot that the runs differ beyond epsilon.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from fedcrm.plots._figure import plt

    pts = sorted(points)
    xs = [p[0] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, [p[1] for p in pts], marker="o", label="DP (per-branch ε)")
    if non_private_auc is not None:
        ax.axhline(non_private_auc, color="tab:green", ls="--", label=reference_label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(xs) == 1 or xs[0] == xs[-1]:
        ax.set_xlim(xs[0] / 2, xs[0] * 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ROC AUC (pooled test customers)")
    if title:
        ax.set_title(title, fontsize=10)
    if warned:
        ax.text(
            0.01,
            0.01,
            "the runs differ beyond ε: see privacy_utility.json",
            transform=ax.transAxes,
            fontsize=8,
            color="tab:red",
        )
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def privacy_utility_plot(
    runs_dir: Path, out: Path | None = None, *, non_private: Path | None = None
) -> PrivacyUtility:
    """Plot final AUC against spent epsilon for every DP run under ``runs_dir``.

    The non-private reference line comes from ``non_private`` (a run directory)
    or from a non-private run found under ``runs_dir``. Also writes the points,
    the runs' deltas and the warnings as ``privacy_utility.json`` beside the plot.

    Raises
    ------
    FedCRMError
        No DP run with a summary under ``runs_dir``.
    """
    from fedcrm.plots._figure import save

    dp_runs: list[SweepRun] = []
    reference: SweepRun | None = None
    for path, summary in load_summaries(runs_dir):
        run = _load_run(path, summary, runs_dir)
        if run.auc is None:
            continue
        if run.epsilon is None:
            reference = run
        else:
            dp_runs.append(run)
    if non_private is not None:
        summary = json.loads((non_private / "summary.json").read_text())
        reference = _load_run(non_private, summary, non_private)
    if not dp_runs:
        raise FedCRMError(f"no DP run with a summary.json under {runs_dir}")
    warnings = sweep_warnings(dp_runs, reference=reference)
    title, xlabel = describe_runs(dp_runs)
    points = sorted((float(r.epsilon), float(r.auc)) for r in dp_runs)  # type: ignore[arg-type]
    ref_auc = reference.auc if reference is not None else None
    ref_label = f"non-private ({model_and_rounds([reference])})" if reference else "non-private"
    out = out or runs_dir / "privacy_utility.png"
    figure = privacy_utility_figure(
        points,
        non_private_auc=ref_auc,
        title=title,
        xlabel=xlabel,
        reference_label=ref_label,
        warned=bool(warnings),
    )
    save(figure, out)
    json_path = out.parent / "privacy_utility.json"
    by_epsilon = sorted(dp_runs, key=lambda r: (r.epsilon, r.auc))
    json_path.write_text(
        json.dumps(
            {
                "points": [
                    {"epsilon": r.epsilon, "auc": r.auc, "run": r.name, "delta": r.deltas()}
                    for r in by_epsilon
                ],
                "non_private_auc": ref_auc,
                "non_private_run": reference.name if reference is not None else None,
                "title": title,
                "xlabel": xlabel,
                "warnings": warnings,
            },
            indent=2,
        )
        + "\n"
    )
    return PrivacyUtility(out, json_path, warnings)


__all__ = [
    "IGNORED_SETTINGS",
    "PrivacyUtility",
    "SweepRun",
    "describe_runs",
    "load_summaries",
    "model_and_rounds",
    "privacy_utility_figure",
    "privacy_utility_plot",
    "setting_differences",
    "spent_epsilon",
    "sweep_warnings",
]
