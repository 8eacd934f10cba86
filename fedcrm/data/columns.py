"""A branch's validated tables in compact typed columns.

Validation reads a customers or events file chunk by chunk; each checked
chunk becomes a :class:`CustomerColumns` or :class:`EventColumns` (Arrow text
for ids, numpy arrays for dates, flags, codes and amounts), and the chunks of
a file are queued with ``append`` and joined once with ``concat``. Events
take about 30 bytes each; customers keep their declared attributes, and
:meth:`CustomerColumns.frame` gives the typed table the loader hands on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from fedcrm.data.spec import DataSpec


@dataclass
class CustomerColumns:
    """A customers table in typed columns (one array each once :meth:`concat` ran)."""

    customer_id: pa.Array
    branch_id: pa.Array
    signup: np.ndarray
    consent: np.ndarray
    opt_out: np.ndarray
    lines: np.ndarray
    attributes: dict[str, pa.Array | np.ndarray] = field(default_factory=dict)
    _parts: list[CustomerColumns] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.lines.shape[0])

    @classmethod
    def empty(cls, spec: DataSpec) -> CustomerColumns:
        """A table with no rows."""
        none = pa.array([], pa.string())
        attrs: dict[str, pa.Array | np.ndarray] = {
            n: np.zeros(0) if a.kind == "numeric" else none for n, a in spec.attributes.items()
        }
        z = np.zeros(0, dtype=bool)
        return cls(none, none, np.zeros(0, np.int64), z, z, np.zeros(0, np.int64), attrs)

    def append(self, part: CustomerColumns) -> None:
        """Queue a chunk's columns for :meth:`concat`."""
        self._parts.append(part)

    def concat(self) -> CustomerColumns:
        """One table from this one and every appended chunk."""
        parts = [self, *self._parts]

        def text(get: object) -> pa.Array:
            arrays = [get(p) for p in parts]  # type: ignore[operator]
            return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())

        attrs: dict[str, pa.Array | np.ndarray] = {}
        for n, first in self.attributes.items():
            if isinstance(first, np.ndarray):
                attrs[n] = np.concatenate([p.attributes[n] for p in parts])
            else:
                attrs[n] = text(lambda p, n=n: p.attributes[n])
        return CustomerColumns(
            text(lambda p: p.customer_id),
            text(lambda p: p.branch_id),
            np.concatenate([p.signup for p in parts]),
            np.concatenate([p.consent for p in parts]),
            np.concatenate([p.opt_out for p in parts]),
            np.concatenate([p.lines for p in parts]),
            attrs,
        )

    def frame(self, spec: DataSpec) -> pd.DataFrame:
        """The typed customers table of :class:`fedcrm.data.loader.CRMData`."""
        out = pd.DataFrame(
            {
                "customer_id": pd.Series(
                    self.customer_id.to_numpy(zero_copy_only=False), dtype=str
                ),
                "branch_id": pd.Series(self.branch_id.to_numpy(zero_copy_only=False), dtype=str),
                "signup_date": self.signup.view("M8[ns]"),
                "consent_analytics": self.consent,
                "ccpa_opt_out": self.opt_out,
            }
        )
        for n in spec.attribute_columns:
            values = self.attributes[n]
            if isinstance(values, np.ndarray):
                out[n] = values
            else:
                out[n] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=str)
        return out


@dataclass
class EventColumns:
    """An events table in compact typed columns (about 30 bytes per event)."""

    customer: np.ndarray  # row of the customer in its customers table, -1 when unknown
    timestamp: np.ndarray  # int64 UTC nanoseconds
    event_type: np.ndarray  # int8 index into EVENT_TYPES
    channel: np.ndarray  # int8 index into CHANNELS
    amount: np.ndarray  # float64
    category: list[tuple[np.ndarray, list[str]]]  # per chunk: codes and their dictionary
    _parts: list[EventColumns] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.customer.shape[0])

    @classmethod
    def empty(cls) -> EventColumns:
        """A table with no rows."""
        z = np.zeros(0, np.int8)
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), z, z, np.zeros(0), [])

    def customers_only(self) -> EventColumns:
        """The same rows with only their customer (all validation needs after a chunk)."""
        z = np.zeros(0, np.int8)
        return EventColumns(self.customer, np.zeros(0, np.int64), z, z, np.zeros(0), [])

    def append(self, part: EventColumns) -> None:
        """Queue a chunk's columns for :meth:`concat`."""
        self._parts.append(part)

    def concat(self) -> EventColumns:
        """One table from this one and every appended chunk."""
        parts = [self, *self._parts]
        return EventColumns(
            np.concatenate([p.customer for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
            np.concatenate([p.event_type for p in parts]),
            np.concatenate([p.channel for p in parts]),
            np.concatenate([p.amount for p in parts]),
            [c for p in parts for c in p.category],
        )

    @staticmethod
    def merge_categories(tables: Sequence[EventColumns]) -> tuple[np.ndarray, pd.Index]:
        """Codes of every event's product category into one sorted vocabulary."""
        pieces = [c for t in tables for c in t.category]
        vocab = pd.Index(sorted({v for _, d in pieces for v in d}), dtype=str)
        out = []
        for idx, dictionary in pieces:
            remap = vocab.get_indexer(pd.Index(dictionary, dtype=object)).astype(np.int32)
            out.append(remap[idx] if len(remap) else idx.astype(np.int32))
        return (np.concatenate(out) if out else np.zeros(0, np.int32)), vocab
