"""The per-customer feature set every model family trains on.

A :class:`FeatureSet` holds one row per customer of one or more branches. It is
built at the branch by :mod:`fedcrm.data.features` and never leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Vocabulary sizes are fixed by the data contract (categories are hashed into
# buckets) so that every branch builds the same embedding tables without
# exchanging a vocabulary. Index 0 is padding / empty.
EVENT_TYPES: tuple[str, ...] = ("purchase", "visit", "return", "support", "email_open", "web_visit")
CHANNELS: tuple[str, ...] = ("store", "web", "app", "phone", "email")
N_CATEGORY_BUCKETS = 32
# Cardinalities of the three categorical sequence fields, padding included.
SEQ_CAT_CARDINALITIES: tuple[int, int, int] = (
    len(EVENT_TYPES) + 1,
    len(CHANNELS) + 1,
    N_CATEGORY_BUCKETS + 1,
)
# Numeric sequence fields: log1p(amount), log1p(days since previous event),
# log1p(days from the event to the cutoff).
SEQ_NUM_FIELDS: tuple[str, ...] = ("log_amount", "log_gap_days", "log_days_to_cutoff")


@dataclass
class FeatureSet:
    """Model inputs and churn labels for a set of customers.

    Attributes
    ----------
    customer_ids : ndarray of str, shape (n,)
        Stays at the branch; never sent, logged or written server-side.
    branch_ids : ndarray of str, shape (n,)
    seq_cat : ndarray of int64, shape (n, K, 3)
        Event type, channel and category bucket of the last K events before the
        cutoff, oldest first, right-padded with 0.
    seq_num : ndarray of float32, shape (n, K, 3)
        The :data:`SEQ_NUM_FIELDS` of the same events, 0 in padding.
    lengths : ndarray of int64, shape (n,)
        Number of real events in each sequence (1..K).
    tabular : ndarray of float32, shape (n, D)
        Per-customer tabular features (names in ``tabular_names``), already on
        a log / share scale so no global normalisation is needed.
    labels : ndarray of int64, shape (n,)
        1 = churned (no purchase within the horizon after the cutoff).
    """

    customer_ids: np.ndarray
    branch_ids: np.ndarray
    seq_cat: np.ndarray
    seq_num: np.ndarray
    lengths: np.ndarray
    tabular: np.ndarray
    labels: np.ndarray
    tabular_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> FeatureSet:
        """The rows selected by an integer or boolean ``index``."""
        return FeatureSet(
            customer_ids=self.customer_ids[index],
            branch_ids=self.branch_ids[index],
            seq_cat=self.seq_cat[index],
            seq_num=self.seq_num[index],
            lengths=self.lengths[index],
            tabular=self.tabular[index],
            labels=self.labels[index],
            tabular_names=list(self.tabular_names),
        )

    @staticmethod
    def concat(parts: list[FeatureSet]) -> FeatureSet:
        """Stack several feature sets (e.g. branches pooled for a baseline)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return FeatureSet(
            customer_ids=np.concatenate([p.customer_ids for p in parts]),
            branch_ids=np.concatenate([p.branch_ids for p in parts]),
            seq_cat=np.concatenate([p.seq_cat for p in parts]),
            seq_num=np.concatenate([p.seq_num for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            tabular=np.concatenate([p.tabular for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            tabular_names=list(parts[0].tabular_names),
        )

    def save(self, path: str) -> None:
        """Write to an ``.npz`` file (branch-local cache)."""
        np.savez(
            path,
            customer_ids=self.customer_ids.astype(str),
            branch_ids=self.branch_ids.astype(str),
            seq_cat=self.seq_cat,
            seq_num=self.seq_num,
            lengths=self.lengths,
            tabular=self.tabular,
            labels=self.labels,
            tabular_names=np.asarray(self.tabular_names, dtype=str),
        )

    @staticmethod
    def load(path: str) -> FeatureSet:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return FeatureSet(
                customer_ids=z["customer_ids"],
                branch_ids=z["branch_ids"],
                seq_cat=z["seq_cat"],
                seq_num=z["seq_num"],
                lengths=z["lengths"],
                tabular=z["tabular"],
                labels=z["labels"],
                tabular_names=[str(s) for s in z["tabular_names"]],
            )
