"""The `fedcrm` command's sub-commands and exit codes."""

from __future__ import annotations

import os
import stat
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
    assert "events.csv:2: amount:" in printed.out
    assert "-77.77" not in printed.out + printed.err


def test_keys_init_public_context_has_no_secret_key(tmp_path: Path) -> None:
    from fedcrm.crypto.ckks import load_public_context

    assert main(["keys", "init", "--out", str(tmp_path)]) == 0
    assert stat.S_IMODE(os.stat(tmp_path / "he_secret.ctx").st_mode) == 0o600
    public = load_public_context(tmp_path / "he_public.ctx")
    assert not public.context.has_secret_key()


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
    for group in ("simulate", "data", "node", "keys", "privacy", "plot", "federation", "server"):
        assert group in listed


def test_a_missing_module_is_named_not_taken_for_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    # A broken install: the module behind `data validate` cannot be imported.
    monkeypatch.setitem(sys.modules, "fedcrm.data.validate", None)
    assert main(["data", "validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fedcrm.data.validate" in err and "not completely installed" in err


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
    done = subprocess.run(
        [sys.executable, "-m", "fedcrm.cli.main", "data", "validate", str(crm)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    # One problem per line, each a whole `file:line: column: what` message.
    assert len(problems) == 3
    assert all(line.startswith("events.csv:") and "amount" in line for line in problems)
    # The closing summary names the whole folder on one line, however long.
    assert any(f"3 problem(s) in {crm}" in line for line in done.stderr.splitlines())
