"""Where benchmarks put their JSON: stdout always, ``bench/results/<name>.json`` with ``--save``.

A saved result records the command that made it, so anyone can rerun it;
``python bench/figures.py`` renders the README's figures from the saved files
only (no figure in the README is typed by hand).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def add_save_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--save`` (write ``bench/results/<name>.json`` as well as printing)."""
    parser.add_argument(
        "--save",
        action="store_true",
        help="also write the JSON to bench/results/<bench>.json (what the README's figures use)",
    )


def emit(name: str, result: Any, *, save: bool, indent: int | None = 2) -> None:
    """Print ``result`` as one JSON object; with ``save`` also keep it with its command."""
    print(json.dumps(result, indent=indent, default=float))
    if not save:
        return
    args = [a for a in sys.argv[1:] if a != "--save"]
    record = {
        "command": " ".join([f"python bench/{name}.py", *args]),
        "time": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 1),
        },
        "result": result,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"saved {path.relative_to(RESULTS.parent.parent)}", file=sys.stderr)
