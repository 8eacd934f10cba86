"""CDNOW import (uses the copy shipped in the installed `lifetimes` package)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fedcrm.data import cdnow
from fedcrm.data.features import build_features
from fedcrm.data.loader import load_crm
from fedcrm.data.validate import validate_dir
from fedcrm.errors import ConfigError, FedCRMError

SOURCE = cdnow.find_cdnow()
needs_file = pytest.mark.skipif(SOURCE is None, reason="lifetimes (fedcrm[cdnow]) not installed")


@needs_file
def test_import_cdnow(tmp_path: Path) -> None:
    out = cdnow.import_cdnow(tmp_path)
    assert validate_dir(out) == []
    data = load_crm(out)
    assert len(data.customers) == 23_570
    assert len(data.events) == 69_659
    assert data.branches() == ["1997-01", "1997-02", "1997-03"]
    assert set(data.events["event_type"]) == {"purchase"}
    assert set(data.events["channel"]) == {"web"}
    assert data.excluded == {"1997-01": 0, "1997-02": 0, "1997-03": 0}
    fs = build_features(data, cutoff=dt.date(1997, 9, 30), horizon_days=180, max_events=20)
    assert len(fs) == 23_570
    assert 0.6 < fs.labels.mean() < 0.85


def test_missing_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--source"):
        cdnow.import_cdnow(tmp_path, source=tmp_path / "nope.txt")
    monkeypatch.setattr(cdnow, "find_cdnow", lambda: None)
    with pytest.raises(FedCRMError, match=r"pip install fedcrm\[cdnow\]"):
        cdnow.load_cdnow()


def test_explicit_source(tmp_path: Path) -> None:
    src = tmp_path / "CDNOW_master.txt"
    src.write_text(
        " customer_id  date number_of_cds  dollar_value\n"
        " 00001 19970101  1   11.77\n 00002 19970212  2   0.00\n"
        " 00001 19970301  1   5.00\n"
    )
    data = cdnow.load_cdnow(tmp_path)
    assert data.customers["branch_id"].tolist() == ["1997-01", "1997-02"]
    assert data.events["amount"].tolist() == [11.77, 5.0, 0.0]
