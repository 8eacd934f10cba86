"""The data spec: what it accepts, what it refuses, and which columns look like personal data."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.data.spec import DataSpec, load_spec, personal_data_kind, resolve_spec
from fedcrm.errors import ConfigError


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("email", "email address"),
        ("E-Mail", "email address"),
        ("customer_email_2", "email address"),
        ("Phone", "phone number"),
        ("mobile", "phone number"),
        ("date_of_birth", "date of birth"),
        ("DOB", "date of birth"),
        ("BirthDate", "date of birth"),
        ("street_address", "postal address"),
        ("zip", "postal address"),
        ("first_name", "name"),
        ("Surname", "name"),
        ("name", "name"),
        ("iban", "identity number"),
        ("segment", None),
        ("age_band", None),
        ("household_size", None),
        ("hotel_nights", None),
        ("product_name_count", None),
        ("mailing_segment", None),
    ],
)
def test_personal_data_names(column: str, kind: str | None) -> None:
    assert personal_data_kind(column) == kind


def test_spec_file_round_trip_and_refusals(tmp_path: Path) -> None:
    spec = tmp_path / "data_spec.yaml"
    spec.write_text(
        "encoding: UTF8\ndelimiter: semicolon\ndecimal: comma\n"
        "attributes:\n  age: numeric\n  tier: {kind: categorical, categories: [a, b]}\n"
    )
    loaded = load_spec(spec)
    assert loaded.encoding == "utf-8" and loaded.attribute_columns == ("age", "tier")
    assert loaded.vocabularies() == {"tier": ("a", "b")}
    # flags win over the file, extra numeric attributes are added
    resolved = resolve_spec(tmp_path, attribute_columns=["visits"], delimiter="tab")
    assert resolved.delimiter == "tab" and resolved.decimal == "comma"
    assert resolved.attribute_columns == ("age", "tier", "visits")
    assert resolved.digest() != loaded.digest()
    for bad, message in (
        ("delimiter: colon\n", "delimiter"),
        ("encoding: klingon\n", "unknown encoding"),
        ("attributes: {tier: categorical}\n", "needs its categories"),
        ("attributes: {tier: {kind: categorical, categories: [a, A]}}\n", "distinct"),
        ("attributes: {tier: {kind: categorical, categories: [a, other]}}\n", "rename it"),
        ("sheet: 1\n", "unknown key"),
    ):
        spec.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_spec(spec)
    assert DataSpec().currency_symbols == "error"
