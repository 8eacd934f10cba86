"""``fedcrm data synth``: named branches, one export folder per branch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcrm.cli import main


def _synth(out: Path, *extra: str) -> int:
    return main(["data", "synth", "--customers", "40", "--seed", "3", "--out", str(out), *extra])


def test_named_branches_one_folder_each_hold_the_same_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _synth(tmp_path / "named", "--branch-ids", "b1,b2,north", "--per-branch") == 0
    assert "one folder per branch" in capsys.readouterr().err
    assert _synth(tmp_path / "plain", "--branches", "3") == 0

    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == ["b1", "b2", "north"]
    plain = pd.read_csv(tmp_path / "plain" / "customers.csv", dtype=str, keep_default_na=False)
    plain_events = pd.read_csv(tmp_path / "plain" / "events.csv", dtype=str)
    generated_ids = ["branch_00", "branch_01", "branch_02"]
    for name, generated in zip(["b1", "b2", "north"], generated_ids, strict=True):
        folder = tmp_path / "named" / name
        customers = pd.read_csv(folder / "customers.csv", dtype=str, keep_default_na=False)
        assert set(customers["branch_id"]) == {name}
        expected = plain[plain["branch_id"] == generated].reset_index(drop=True)
        pd.testing.assert_frame_equal(
            customers.drop(columns="branch_id"), expected.drop(columns="branch_id")
        )
        events = pd.read_csv(folder / "events.csv", dtype=str)
        assert len(events) == plain_events["customer_id"].isin(customers["customer_id"]).sum()
        assert main(["data", "validate", str(folder)]) == 0


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--branches", "2", "--branch-ids", "b1,b2,b3"], "names 3 branch(es) but --branches is 2"),
        (["--branch-ids", "b1,b1"], "names b1 more than once"),
        (["--branch-ids", "b1,../b2"], "is not a valid id"),
    ],
)
def test_branch_ids_that_do_not_fit_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    assert _synth(tmp_path / "out", *extra) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
