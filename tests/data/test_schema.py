"""The feature schema a bundle stores, and the refusal of features that differ from it."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.data.schema import (
    attribute_columns_of,
    check_schema,
    feature_schema,
    raw_value,
    tabular_names,
)
from fedcrm.errors import SchemaMismatchError


def test_the_same_features_pass() -> None:
    names = tabular_names(("age",))
    check_schema(feature_schema(names, max_events=30), names, max_events=30)


def test_a_missing_attribute_column_names_the_feature_not_a_value() -> None:
    schema = feature_schema(tabular_names(("loyalty_points",)), max_events=30)
    with pytest.raises(SchemaMismatchError, match="missing \\['attr_loyalty_points'\\]"):
        check_schema(schema, tabular_names(), max_events=30)


def test_a_renamed_feature_is_named_with_its_position() -> None:
    names = tabular_names()
    other = [*names[:3], "log_n_visits", *names[4:]]
    with pytest.raises(SchemaMismatchError, match="feature 3 is `log_n_visits`"):
        check_schema(feature_schema(names, max_events=30), other, max_events=30)


def test_another_sequence_length_or_vocabulary_is_refused() -> None:
    names = tabular_names()
    schema = feature_schema(names, max_events=30)
    with pytest.raises(SchemaMismatchError, match="event fields"):
        check_schema(schema, names, max_events=50)
    schema["sequence"]["categorical"][0]["vocabulary"] = ["purchase", "visit"]
    with pytest.raises(SchemaMismatchError, match="vocabularies"):
        check_schema(schema, names, max_events=30)


def test_the_schema_carries_vocabularies_and_kinds() -> None:
    schema = feature_schema(tabular_names(("age",)), max_events=7)
    kinds = {e["name"]: e["kind"] for e in schema["tabular"]}
    assert kinds["log_recency_days"] == "log1p"
    assert kinds["share_web"] == "share"
    assert kinds["purchase_trend_90d"] == "log_ratio"
    assert kinds["attr_age"] == "signed_log1p"
    cats = {c["name"]: c for c in schema["sequence"]["categorical"]}
    assert cats["event_type"]["vocabulary"][0] == "purchase"
    assert cats["product_category"]["hashed_buckets"] == 32
    assert attribute_columns_of([e["name"] for e in schema["tabular"]]) == ("age",)


def test_raw_values_undo_the_feature_scales() -> None:
    assert raw_value("log_recency_days", np.log1p(94.0)) == pytest.approx(94.0)
    assert raw_value("attr_balance", -np.log1p(250.0)) == pytest.approx(-250.0)
    assert raw_value("share_web", 0.25) == pytest.approx(0.25)
