"""Benchmark: `fedcrm data validate` on a ~51 MB events file with a problem in every row.

Run ``python bench/validate_errors.py`` (never part of the test run). It writes
a synthetic branch whose events file is about ``--mb`` MB, then a copy whose
every amount carries a currency symbol (``$12.50``), and runs the real command
on both, each in its own process. Prints one JSON object: ``events_mb``,
``events_rows``, ``invalid_s`` / ``valid_s`` (wall time of the command),
``ratio`` (invalid / valid), ``invalid_cpu_s`` / ``valid_cpu_s`` (user + system
CPU seconds of the command, less sensitive to other load than wall time),
``invalid_lines_printed`` (stdout lines: one per kind of problem),
``invalid_peak_rss_mb`` / ``valid_peak_rss_mb`` and ``load_average`` (the
machine's 1-minute load when it finished). The times include starting Python
and importing fedcrm, as a user sees them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from _results import add_save_flag, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcrm.data.synthetic import write_synthetic_branch


def _run(root: Path) -> tuple[float, float, int, float]:
    """Wall and CPU seconds, stdout lines and peak RSS (MB) of `fedcrm data validate root`."""
    cmd = [sys.executable, "-m", "fedcrm.cli.main", "data", "validate", str(root)]
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=os.environ)
        _, _, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = 0  # reaped above
        out.seek(0)
        lines = [line for line in out.read().decode().splitlines() if line.strip()]
    return seconds, usage.ru_utime + usage.ru_stime, len(lines), usage.ru_maxrss / 1024


def build(work: Path, mb: float) -> None:
    """Write the valid and the invalid export (run in its own process: see :func:`main`)."""
    valid, invalid = work / "valid", work / "invalid"
    write_synthetic_branch(valid, customers=int(mb * 1e6 / 1210), seed=0)
    invalid.mkdir(parents=True, exist_ok=True)
    shutil.copy(valid / "customers.csv", invalid / "customers.csv")
    events = pacsv.read_csv(
        valid / "events.csv",
        convert_options=pacsv.ConvertOptions(column_types={"amount": pa.string()}),
    )
    plain = pacsv.WriteOptions(quoting_style="none")  # as most tools write: no quotes
    pacsv.write_csv(events, valid / "events.csv", write_options=plain)
    dollars = pc.binary_join_element_wise("$", events.column("amount"), "")
    events = events.set_column(events.schema.get_field_index("amount"), "amount", dollars)
    pacsv.write_csv(events, invalid / "events.csv", write_options=plain)


def main() -> None:
    """Write the exports, validate both, print the JSON.

    The exports are written by a child process so that this one stays small: a
    child's peak RSS counts the memory of the process it was forked from.
    """
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=float, default=51.0, help="size of the events file")
    p.add_argument("--keep", help="write the exports here and keep them")
    p.add_argument("--build", help=argparse.SUPPRESS)
    add_save_flag(p)
    args = p.parse_args()
    if args.build:
        build(Path(args.build), args.mb)
        return
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedcrm-bench-"))
    try:
        valid, invalid = work / "valid", work / "invalid"
        subprocess.run(
            [sys.executable, __file__, "--build", str(work), "--mb", str(args.mb)], check=True
        )
        valid_s, valid_cpu, valid_lines, valid_rss = _run(valid)
        invalid_s, invalid_cpu, invalid_lines, invalid_rss = _run(invalid)
        with (invalid / "events.csv").open("rb") as f:
            rows = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b"")) - 1
        result = {
            "events_mb": round((invalid / "events.csv").stat().st_size / 1e6, 1),
            "events_rows": rows,
            "invalid_s": round(invalid_s, 2),
            "valid_s": round(valid_s, 2),
            "ratio": round(invalid_s / valid_s, 2),
            "invalid_cpu_s": round(invalid_cpu, 2),
            "valid_cpu_s": round(valid_cpu, 2),
            "load_average": os.getloadavg()[0],
            "invalid_lines_printed": invalid_lines,
            "valid_lines_printed": valid_lines,
            "invalid_peak_rss_mb": round(invalid_rss),
            "valid_peak_rss_mb": round(valid_rss),
        }
        emit("validate_errors", result, save=args.save)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
