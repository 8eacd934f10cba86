"""The README's figures are the rendering of the benchmarks' saved results, nothing typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures():
    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_table_is_rendered_from_saved_results() -> None:
    figures = _figures()
    section = figures.readme_section((ROOT / "README.md").read_text())
    assert section == figures.render(), "run `python bench/figures.py --write`"


def test_every_saved_result_names_the_bench_that_wrote_it() -> None:
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["command"].startswith(f"python bench/{path.stem}.py"), path.name
        assert (ROOT / "bench" / f"{path.stem}.py").is_file()
        assert isinstance(record["result"], dict) and record["result"]


def test_a_changed_figure_is_caught(tmp_path: Path) -> None:
    figures = _figures()
    (tmp_path / "he.json").write_text(
        json.dumps(
            {
                "command": "python bench/he.py",
                "machine": {"cpus": 2, "load_average_1m": 0.5},
                "result": {"n_params": 10, "branches": 3, "step": {}, "simulation": {}},
            }
        )
    )
    (tmp_path / "ledger.json").write_text(
        json.dumps(
            {
                "command": "python bench/ledger.py",
                "machine": {},
                "result": {"trees": {"rdp": {"verify_1000_s": 0.25}}},
            }
        )
    )
    table = figures.render(tmp_path)
    assert "trees RDP 0.25 s" in table
    assert figures.render(tmp_path) != figures.render(tmp_path / "none")
