"""Convert the CDNOW transaction log into the data contract.

``CDNOW_master.txt`` (Fader & Hardie) lists 69,659 purchases by the 23,570
customers who first bought at CDNOW, an online music store, in the first quarter
of 1997, observed until the end of June 1998. Each line holds a customer id,
a date (YYYYMMDD), the number of CDs and the dollar amount.

The conversion makes one ``purchase`` event per line, with channel ``web``
(CDNOW sold only online), ``amount`` = the dollar value and
``product_category`` = ``"cd"``; timestamps are midnight UTC of the date. Each
customer's ``branch_id`` is the acquisition month (``1997-01``, ``1997-02``,
``1997-03``) and ``signup_date`` the first purchase date; consent is true and
opt-out false for everyone.

The file ships inside the ``lifetimes`` package (``pip install fedcrm[cdnow]``);
it is located without importing ``lifetimes``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.data.loader import CRMData, sort_events
from fedcrm.errors import ConfigError

logger = logging.getLogger(__name__)

FILE_NAME = "CDNOW_master.txt"
_IN_PACKAGE = ("datasets", FILE_NAME)


PUBLIC_CUTOFF = dt.date(1997, 9, 30)
"""The public churn cutoff of CDNOW (fixed, independent of the data)."""


def find_cdnow() -> Path | None:
    """The ``CDNOW_master.txt`` shipped in the installed ``lifetimes`` package, if any.

    ``importlib.util.find_spec`` of a top-level package only locates it; no code
    of ``lifetimes`` runs.
    """
    try:
        spec = importlib.util.find_spec("lifetimes")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc).joinpath(*_IN_PACKAGE)
        if candidate.is_file():
            return candidate
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidate = Path(str(dist.locate_file(Path("lifetimes").joinpath(*_IN_PACKAGE))))
    return candidate if candidate.is_file() else None


def _resolve(source: str | Path | None) -> Path:
    if source is not None:
        path = Path(source)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise ConfigError(
                f"CDNOW source {path} is not a file; pass the path of {FILE_NAME} "
                "with --source (data.source)"
            )
        return path
    found = find_cdnow()
    if found is None:
        raise ConfigError(
            f"{FILE_NAME} not found: install the optional dependency with "
            "`pip install fedcrm[cdnow]` (it ships inside `lifetimes`) or pass the "
            "file with --source (data.source)"
        )
    return found


def load_cdnow(source: str | Path | None = None) -> CRMData:
    """Read the CDNOW log as :class:`CRMData` (one branch per acquisition month).

    Parameters
    ----------
    source : str or Path, optional
        ``CDNOW_master.txt`` or a directory holding it; ``None`` finds the copy
        shipped in ``lifetimes``.

    Raises
    ------
    ConfigError
        When the file cannot be found.
    """
    path = _resolve(source)
    raw = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        skiprows=1,
        dtype=str,
        names=["customer_id", "date", "number_of_cds", "dollar_value"],
    )
    ts = pd.to_datetime(raw["date"], format="%Y%m%d").astype("datetime64[ns]")
    cid = raw["customer_id"].astype(str)
    first = ts.groupby(cid.to_numpy()).transform("min")
    branch = first.dt.strftime("%Y-%m")
    events = pd.DataFrame(
        {
            "customer_id": cid,
            "timestamp": ts,
            "event_type": pd.array(np.full(len(raw), "purchase", dtype=object), dtype=str),
            "amount": pd.to_numeric(raw["dollar_value"]).astype(np.float64),
            "channel": pd.array(np.full(len(raw), "web", dtype=object), dtype=str),
            "product_category": pd.array(np.full(len(raw), "cd", dtype=object), dtype=str),
            "branch_id": branch.astype(str),
        }
    )
    events = sort_events(events)
    firsts = events.drop_duplicates("customer_id", keep="first")
    customers = pd.DataFrame(
        {
            "customer_id": firsts["customer_id"].to_numpy(),
            "branch_id": firsts["branch_id"].to_numpy(),
            "signup_date": firsts["timestamp"].dt.normalize().to_numpy(),
            "consent_analytics": True,
            "ccpa_opt_out": False,
        }
    ).astype({"customer_id": str, "branch_id": str})
    excluded = dict.fromkeys(sorted(customers["branch_id"].unique()), 0)
    logger.info("CDNOW: %d customer(s), %d purchase(s)", len(customers), len(events))
    return CRMData(customers, events, excluded)


def import_cdnow(out_dir: str | Path, *, source: str | Path | None = None) -> Path:
    """Write the CDNOW log as contract files (one pair, ``branch_id`` = acquisition month).

    Parameters
    ----------
    out_dir : str or Path
        Directory to write ``customers.csv`` and ``events.csv`` into.
    source : str or Path, optional
        As for :func:`load_cdnow`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    return load_cdnow(source).write(out_dir)
