"""The feature schema: what every column a model reads means, and the check against it.

A model bundle (:mod:`fedcrm.models.bundle`) stores :func:`feature_schema` so
that scoring can tell, before predicting anything, whether the features built
from today's export are the ones the model was trained on. The schema holds
names, kinds and vocabularies, never a customer's value:

``tabular``
    One entry per tabular column, in order: ``name`` and ``kind``:
    ``log1p`` (``log1p`` of a count, days or an amount), ``share`` (a share of
    the customer's events, 0..1), ``log_ratio`` (``log1p(a) - log1p(b)``),
    ``signed_log1p`` (a declared numeric attribute, ``sign(x) log1p(|x|)``) or
    ``one_hot`` (``column=category`` of a declared categorical attribute, 0/1).
``sequence``
    ``max_events`` and the fields of each event: the categorical ones with
    their vocabulary (index 0 is padding / empty) or hashing rule, then the
    numeric ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcrm.data.dataset import CHANNELS, EVENT_TYPES, N_CATEGORY_BUCKETS, SEQ_NUM_FIELDS
from fedcrm.data.feature_blocks import WINDOWS
from fedcrm.data.features import tabular_names
from fedcrm.errors import SchemaMismatchError

SCHEMA_VERSION = 1
ATTRIBUTE_PREFIX = "attr_"


def feature_kind(name: str) -> str:
    """The kind of a tabular column (see the module docstring)."""
    if "=" in name:
        return "one_hot"
    if name.startswith(ATTRIBUTE_PREFIX):
        return "signed_log1p"
    if name.startswith("share_"):
        return "share"
    if name == "purchase_trend_90d":
        return "log_ratio"
    return "log1p"


def raw_value(name: str, value: np.ndarray | float) -> np.ndarray:
    """A tabular column back on its natural scale (days, counts, amounts, shares).

    ``log1p`` columns are ``expm1``-ed, attributes undo the signed log, shares
    and the log ratio are returned unchanged.
    """
    x = np.asarray(value, dtype=np.float64)
    kind = feature_kind(name)
    if kind == "log1p":
        return np.expm1(x)
    if kind == "signed_log1p":
        return np.sign(x) * np.expm1(np.abs(x))
    return x


def attribute_columns_of(names: Sequence[str]) -> tuple[str, ...]:
    """The declared attribute columns behind ``attr_*`` feature names."""
    return tuple(n[len(ATTRIBUTE_PREFIX) :] for n in names if n.startswith(ATTRIBUTE_PREFIX))


def feature_schema(names: Sequence[str], *, max_events: int) -> dict[str, Any]:
    """The schema of features with tabular columns ``names`` (JSON-ready)."""
    return {
        "version": SCHEMA_VERSION,
        "tabular": [{"name": str(n), "kind": feature_kind(str(n))} for n in names],
        "sequence": {
            "max_events": int(max_events),
            "categorical": [
                {"name": "event_type", "vocabulary": list(EVENT_TYPES)},
                {"name": "channel", "vocabulary": list(CHANNELS)},
                {
                    "name": "product_category",
                    "hashed_buckets": N_CATEGORY_BUCKETS,
                    "hash": "crc32(lower(strip(category))) % buckets + 1",
                },
            ],
            "numeric": list(SEQ_NUM_FIELDS),
        },
    }


def schema_names(schema: Mapping[str, Any]) -> list[str]:
    """The tabular column names of a schema."""
    return [str(entry["name"]) for entry in schema.get("tabular", [])]


def check_schema(schema: Mapping[str, Any], names: Sequence[str], *, max_events: int) -> None:
    """Refuse features that are not the ones ``schema`` describes.

    Parameters
    ----------
    schema
        From :func:`feature_schema` (e.g. a bundle's).
    names, max_events
        The tabular column names and sequence length of the features at hand.

    Raises
    ------
    SchemaMismatchError
        Naming the first difference (feature names only, never a value).
    """
    if schema.get("version") != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"the model's feature schema has version {schema.get('version')!r}; this fedcrm "
            f"reads version {SCHEMA_VERSION}: score with the fedcrm release that trained it"
        )
    ours = feature_schema(names, max_events=max_events)
    if schema.get("sequence") != ours["sequence"]:
        raise SchemaMismatchError(
            "the model's event fields (vocabularies, category hashing or sequence length) "
            "differ from this fedcrm's; score with the fedcrm release that trained it"
        )
    expected, got = schema_names(schema), [str(n) for n in names]
    if expected == got:
        return
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            raise SchemaMismatchError(
                f"feature {i} is `{b}` in the data but `{a}` in the model; the export must "
                "declare the attribute columns the model was trained with"
            )
    missing = expected[len(got) :]
    extra = got[len(expected) :]
    detail = f"missing {missing}" if missing else f"unexpected {extra}"
    raise SchemaMismatchError(
        f"the model expects {len(expected)} tabular features, the data gives {len(got)} ({detail})"
    )


__all__ = [
    "WINDOWS",
    "attribute_columns_of",
    "check_schema",
    "feature_kind",
    "feature_schema",
    "raw_value",
    "schema_names",
    "tabular_names",
]
