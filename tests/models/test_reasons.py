"""Reasons: topics ranked by attribution, told with the customer's own values."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.data.schema import tabular_names
from fedcrm.models.reasons import (
    SEQUENCE_GROUPS,
    reasons,
    sequence_facts,
    sequence_groups,
    topic_of,
)

NAMES = tabular_names()


def _row(**values: float) -> np.ndarray:
    row = np.zeros((1, len(NAMES)))
    for name, v in values.items():
        row[0, NAMES.index(name)] = v
    return row


def test_only_what_raises_the_risk_is_a_reason_strongest_first() -> None:
    tab = _row(log_recency_days=np.log1p(94), log_purchase_recency_days=np.log1p(200))
    typical = _row(log_recency_days=np.log1p(21), log_purchase_recency_days=np.log1p(40))[0]
    attr = _row(log_recency_days=0.4, log_purchase_recency_days=1.2, share_support=-0.9)
    attr[0, NAMES.index("log_tenure_days")] = 0.01  # too small to be a reason

    (found,) = reasons(NAMES, attr, tab, typical, top=3)

    assert [t for t, _ in found] == [
        "no purchase for 200 days (typical: 40)",
        "no activity for 94 days (typical: 21)",
    ]
    assert [v for _, v in found] == [1.2, 0.4]


def test_a_topic_adds_its_features_and_is_told_by_the_strongest() -> None:
    tab = _row(log_purchases_90d=np.log1p(3), log_purchases_180d=np.log1p(8))
    attr = _row(log_purchases_90d=0.3, purchase_trend_90d=0.4, log_n_purchases=0.1)
    (found,) = reasons(NAMES, attr, tab, np.zeros(len(NAMES)), top=3)
    assert [t for t, _ in found] == ["purchases down 40% against the previous 90 days (3 vs 5)"]
    assert found[0][1] == pytest.approx(0.8)


def test_event_sequence_groups_tell_recent_events() -> None:
    # Events: support 10 and 40 days ago, support 120 days ago, a purchase 150 days ago.
    seq_cat = np.array([[[1, 1, 0], [4, 4, 0], [4, 4, 0], [4, 4, 0], [0, 0, 0]]])
    days = np.array([[150.0, 120.0, 40.0, 10.0, 0.0]])
    seq_num = np.zeros((1, 5, 3), dtype=np.float32)
    seq_num[..., 2] = np.log1p(days)
    facts = sequence_facts(seq_cat, seq_num)
    attr = np.zeros((1, 5, 6))
    attr[0, 1:4, 0] = 0.3  # the support events' type field
    attr[0, :4, 5] = 0.05  # timing
    groups = sequence_groups(attr, seq_cat)
    assert groups[0, SEQUENCE_GROUPS.index("events:support")] == pytest.approx(0.9)
    assert groups[0, SEQUENCE_GROUPS.index("timing")] == pytest.approx(0.2)

    tab = _row(log_recency_days=np.log1p(10))
    (found,) = reasons(
        NAMES, np.zeros((1, len(NAMES))), tab, tab[0], groups=groups, facts=facts, top=2
    )
    assert found[0][0] == "2 support contacts in the last 90 days (1 in the 90 days before)"
    assert found[1][0] == "no activity for 10 days (typical: 10)"


def test_every_feature_and_group_has_a_topic() -> None:
    topics = {topic_of(n) for n in [*tabular_names(("age",)), *SEQUENCE_GROUPS]}
    assert {"recency", "purchases", "support", "returns", "channel", "attribute:age"} <= topics
    assert topic_of("log_n_support") == topic_of("events:support") == topic_of("share_support")
