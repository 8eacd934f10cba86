"""The `fedcrm` command's sub-commands and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.cli import main


def test_data_synth_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "crm"
    assert (
        main(
            [
                "data",
                "synth",
                "--branches",
                "2",
                "--customers",
                "50",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["data", "validate", str(out)]) == 0


def test_data_validate_reports_problems_without_values(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "crm"
    main(
        ["data", "synth", "--branches", "1", "--customers", "20", "--seed", "1", "--out", str(out)]
    )
    events = out / "events.csv"
    lines = events.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("amount")] = "-77.77"
    lines[1] = ",".join(row)
    events.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["data", "validate", str(out)]) == 1
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [
        "events.csv: amount: negative amount (must be >= 0) in 1 row (line 2): record a refund "
        "as event_type return with a positive amount"
    ]
    assert "-77.77" not in printed.out + printed.err
    assert main(["data", "validate", str(out), "--max-problems", "5"]) == 1
    printed = capsys.readouterr()
    assert "events.csv:2: amount: negative amount (must be >= 0)" in printed.out.splitlines()
    assert "-77.77" not in printed.out + printed.err


def test_privacy_verify_of_an_empty_dir_fails_saying_what_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["privacy", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no ledger (*.jsonl)" in err and str(tmp_path) in err


def test_help_lists_every_command_group(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    listed = capsys.readouterr().out
    for group in ("simulate", "data", "node", "privacy", "plot", "federation", "server", "score"):
        assert group in listed


def test_a_missing_module_is_named_not_taken_for_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    # A broken install: the module behind `data validate` cannot be imported.
    monkeypatch.setitem(sys.modules, "fedcrm.data.source", None)
    assert main(["data", "validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fedcrm.data.source" in err and "not completely installed" in err


def test_piped_output_is_never_wrapped(tmp_path: Path) -> None:
    import subprocess
    import sys

    crm = tmp_path / ("a-long-export-folder-name-" * 4)
    main(
        ["data", "synth", "--branches", "1", "--customers", "30", "--seed", "2", "--out", str(crm)]
    )
    events = crm / "events.csv"
    lines = events.read_text().splitlines()
    header = lines[0].split(",")
    for i in range(1, 4):
        row = lines[i].split(",")
        row[header.index("amount")] = "not-a-number"
        lines[i] = ",".join(row)
    events.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    validate = ["data", "validate", str(crm), "--max-problems", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "fedcrm.cli.main", *validate],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    # One summary line, then one problem per line, each a whole `file:line: column: what`.
    assert problems[0] == (
        "events.csv: amount: not a number in 3 rows (lines 2, 3, 4): write plain numbers "
        "such as 12.5"
    )
    assert problems[1:] == [f"events.csv:{n}: amount: not a number" for n in (2, 3, 4)]
    # The closing count names the whole folder on one line, however long.
    assert any(f"3 problem(s) of 1 kind(s) in {crm}" in line for line in done.stderr.splitlines())
