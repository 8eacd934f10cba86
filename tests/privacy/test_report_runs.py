"""The privacy report of real run directories: a deployed run, format-2 ledgers, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.identity import RosterFile
from fedcrm.privacy.accounting import Mechanism
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.report import build_report
from fedcrm.privacy.signing import generate_signing_key
from fedcrm.server.ledger_store import LedgerStore, keys_from_dir
from fedcrm.server.run_dir import RunDir

from .conftest import DELTA, fill, sgd_round

SPLIT = "0123456789abcdef"


@pytest.fixture
def deployed_run(tmp_path: Path) -> tuple[Path, Path]:
    """A deployed run directory made as the ServerApp makes it, and the admitted list.

    Each branch's keys are born in its own folder and admitted from its request;
    the server keeps its ledger copies in ``server/ledgers/``, exports the run's
    branches into the run directory and writes their public keys from the
    admitted list (``keys/<branch>.pub``).
    """
    from fedcrm.deploy.admission import admit_request
    from fedcrm.deploy.branch_dir import init_branch_dir
    from fedcrm.deploy.provision import init_federation, load_federation
    from fedcrm.deploy.request import read_request

    fed = tmp_path / "fed"
    init_federation(fed, "127.0.0.1:9092")
    server_dir = fed / "server"
    store = LedgerStore(server_dir, public_keys=keys_from_dir(server_dir / "keys"))
    for branch, rounds in (("b1", 3), ("b2", 2)):
        bd, _ = init_branch_dir(tmp_path / "branches" / branch, branch)
        admit_request(load_federation(fed), read_request(bd.request))
        ledger = Ledger(bd.root / "ledger.jsonl", branch_id=branch, signing_key=bd.signing_key)
        fill(ledger, rounds, run_id="7")
        store.join(branch, (bd.root / "ledger.jsonl").read_text().splitlines())
    run = RunDir(tmp_path / "runs" / "run-7").path
    roster = RosterFile(server_dir / "admitted.json")
    roster.roster().write_signing_keys(run / "keys")
    store.export(run, ["b1", "b2"], server_dir / "keys")
    return run, server_dir / "admitted.json"


def test_a_deployed_run_directory_verifies_and_reports_with_its_own_keys(
    deployed_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, admitted = deployed_run
    assert sorted(p.name for p in (run / "keys").iterdir()) == ["b1.pub", "b2.pub"]
    assert main(["privacy", "verify", str(run)]) == 0
    assert main(["privacy", "report", str(run), "--out", str(run / "report.html")]) == 0
    assert "every ledger verified" in capsys.readouterr().err
    page = (run / "report.html").read_text()
    assert "Ledger verification</td><td><span class='ok'>passed" in page
    assert "Every ledger verified" in page
    # The central team's admitted list serves as the keys too.
    out = run / "report-admitted.html"
    assert main(["privacy", "report", str(run), "--out", str(out), "--keys", str(admitted)]) == 0
    assert f"passed</span> with the keys in {admitted}" in out.read_text()


def test_privacy_report_exits_1_when_a_ledger_does_not_verify(
    deployed_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = deployed_run
    lines = (run / "ledger" / "b2.jsonl").read_text().splitlines()
    (run / "ledger" / "b2.jsonl").write_text("\n".join(lines[:-2] + lines[-1:]) + "\n")

    assert main(["privacy", "report", str(run), "--out", str(run / "report.html")]) == 1
    err = capsys.readouterr().err
    assert "ledger verification FAILED" in err and "b2" in err
    page = (run / "report.html").read_text()  # still written, saying why
    assert "<span class='bad'>FAILED</span>" in page and "Branch b2 failed" in page
    # A ledger directory without keys fails as well (nothing was verified).
    (run / "keys" / "b1.pub").unlink()
    assert main(["privacy", "report", str(run / "ledger"), "--out", str(run / "r.html")]) == 1


def _format2_run(tmp_path: Path, evaluation: str) -> Path:
    """Two branches with train and evaluation reservations on one split, and releases."""
    for branch in ("b1", "b2"):
        private, _ = generate_signing_key(tmp_path / "keys", branch)
        key = tmp_path / "branches" / branch / private.name
        key.parent.mkdir(parents=True)
        private.rename(key)
        ledger = Ledger(tmp_path / "ledger" / f"{branch}.jsonl", branch_id=branch, signing_key=key)
        common = {"run_id": "r1", "model": "lstm", "delta": DELTA, "accountant": "rdp"}
        for r in (1, 2):
            res = ledger.reserve(
                round=r, mechanism=sgd_round(), step=f"round-{r}", split=SPLIT, **common
            )
            ledger.record_release(reservation=res, request="a" * 64, reply="b" * 64)
        if evaluation == "dp":
            res = ledger.reserve(
                round=2,
                mechanism=Mechanism("dp-eval", 3.0, 1.0, 1, sensitivity=1.0),
                purpose="evaluation",
                step="eval-final",
                split=SPLIT,
                **common,
            )
            ledger.record_release(reservation=res, request="c" * 64, reply="d" * 64)
    summary = {
        "model": "lstm",
        "status": "completed",
        "stopped_reason": None,
        "evaluation": {"mechanism": evaluation},
        "privacy": {
            "mode": "dp",
            "per_branch": {b: {"ceiling": 8.0} for b in ("b1", "b2")},
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_spend_per_purpose_releases_and_parallel_composition_are_shown(tmp_path: Path) -> None:
    report = build_report(_format2_run(tmp_path, "dp"))
    assert report.verified
    page = report.html
    purposes = re.search(r'<table id="purpose-table">.*?</table>', page, re.S).group(0)  # type: ignore[union-attr]
    row = re.search(r"<tr><td>b1</td>.*?</tr>", purposes).group(0)  # type: ignore[union-attr]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    train, evaluation, rule, total, charged, released = cells[1:]
    assert rule.startswith("parallel") and float(total) == max(float(train), float(evaluation))
    assert (charged, released) == ("3", "3")
    mechanisms = re.search(r'<table id="mechanism-table">.*?</ul>', page, re.S).group(0)  # type: ignore[union-attr]
    assert "<code>dp-eval</code>" in mechanisms
    assert "<code>dp-eval</code>: Gaussian mechanism on evaluation statistics" in mechanisms
    assert "compose in parallel" in page and "Reservations and releases" in page
    assert "differentially private (<code>dp-eval</code>" in page
    # Same ledgers at both branches: the note says their lines coincide.
    assert "b1 and b2 spent the same epsilon at every charge" in page


def test_evaluation_that_is_not_dp_is_said_to_be_so(tmp_path: Path) -> None:
    page = build_report(_format2_run(tmp_path, "thresholded")).html
    assert "Evaluation</td><td><b>not DP</b>: groups of at least k customers" in page
    assert "are <b>not differentially private</b>" in page and "min-cell-count" in page


def test_a_run_stopped_early_says_so(tmp_path: Path) -> None:
    run = _format2_run(tmp_path, "thresholded")
    summary = json.loads((run / "summary.json").read_text())
    reason = "round 2: only 1 branch update(s) could be aggregated (1 refused: budget-exhausted)"
    summary.update(status="stopped_early", stopped_reason=reason)
    page = build_report(run, summary=summary).html
    assert f"Run</td><td><span class='bad'>stopped early</span>: {reason}" in page
    assert "Run</td><td>completed" in build_report(run).html
