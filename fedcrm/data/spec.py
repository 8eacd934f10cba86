"""A branch's data spec: how its export is written and which attribute columns it declares.

Written once per branch, as ``data_spec.yaml`` beside the export (or any file
named by ``--spec``, ``data.spec`` or the node-config key ``data-spec``), and
read by ``fedcrm data validate``, ``fedcrm node start``, ``fedcrm simulate`` and
the branch's ClientApp alike::

    encoding: auto            # auto | utf-8 | utf-16 | cp1252 | latin-1 (any Python codec)
    delimiter: auto           # auto | comma | semicolon | tab | pipe
    decimal: dot              # dot | comma
    currency_symbols: error   # error | strip ($, EUR, thousands separators...)
    attributes:
      age: numeric
      segment:
        kind: categorical
        categories: [gold, silver, bronze]
    sql:                      # with a database source: a table name or a SELECT
      customers: crm.customers
      events: SELECT cust_no AS customer_id, ... FROM crm.events

Every key is optional. Command-line flags and overrides (``--delimiter``,
``data.delimiter``...) win over the file.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcrm.errors import ConfigError

SPEC_FILE = "data_spec.yaml"
OTHER = "other"
DELIMITERS: dict[str, str] = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeSpec(_Strict):
    """One declared customer attribute column."""

    kind: Literal["numeric", "categorical"]
    categories: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _vocabulary(self) -> AttributeSpec:
        if self.kind == "numeric" and self.categories:
            raise ValueError("a numeric attribute takes no categories")
        if self.kind == "categorical":
            if not self.categories:
                raise ValueError("a categorical attribute needs its categories: [a, b, ...]")
            folded = [c.strip().casefold() for c in self.categories]
            if "" in folded or len(set(folded)) != len(folded):
                raise ValueError("categories must be distinct and not empty")
            if OTHER in folded:
                raise ValueError(f"`{OTHER}` is the column for undeclared values; rename it")
        return self


class SqlSpec(_Strict):
    """Where the contract tables are in a database: a table name or a SELECT query each."""

    customers: str = "customers"
    events: str = "events"


class DataSpec(_Strict):
    """How a branch's export is written and what it declares (see the module docstring)."""

    encoding: str = "auto"
    delimiter: Literal["auto", "comma", "semicolon", "tab", "pipe"] = "auto"
    decimal: Literal["dot", "comma"] = "dot"
    currency_symbols: Literal["error", "strip"] = "error"
    attributes: dict[str, AttributeSpec] = Field(default_factory=dict)
    sql: SqlSpec = Field(default_factory=SqlSpec)

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":
            return value
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; use auto, utf-8, utf-16, cp1252 or latin-1"
            ) from None

    @field_validator("attributes", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: {"kind": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _no_personal_data(self) -> DataSpec:
        for name in self.attributes:
            what = personal_data_kind(name)
            if what is not None:
                raise ValueError(
                    f"attribute `{name}` looks like personal data ({what}): drop the column "
                    "before export instead of declaring it"
                )
        return self

    @property
    def attribute_columns(self) -> tuple[str, ...]:
        """The declared attribute columns, in declaration order."""
        return tuple(self.attributes)

    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """The categories of every categorical attribute."""
        return {n: a.categories for n, a in self.attributes.items() if a.kind == "categorical"}

    def with_numeric(self, names: Sequence[str]) -> DataSpec:
        """A copy that also declares ``names`` as numeric attributes."""
        extra = {n: {"kind": "numeric"} for n in names if n not in self.attributes}
        if not extra:
            return self
        attrs = {k: v.model_dump() for k, v in self.attributes.items()}
        return DataSpec.model_validate({**self.model_dump(), "attributes": {**attrs, **extra}})

    def with_settings(self, **settings: Any) -> DataSpec:
        """A copy with the given read settings (``None`` values leave the spec's own)."""
        given = {k: v for k, v in settings.items() if v is not None}
        return DataSpec.model_validate({**self.model_dump(), **given})

    def digest(self) -> str:
        """A stable hash of the spec (what a feature cache must depend on)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _errors(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; valid keys: " + ", ".join(sorted(DataSpec.model_fields))
        lines.append(f"  {loc}: {msg}")
    return ConfigError(f"{where}:\n" + "\n".join(lines))


def load_spec(path: str | Path) -> DataSpec:
    """Read a data spec file.

    Raises
    ------
    ConfigError
        When the file is missing, not YAML, or has an unknown key or value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"data spec {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"data spec {path} is not readable YAML ({type(exc).__name__})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"data spec {path} must be a mapping of keys to values")
    try:
        return DataSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise _errors(exc, f"invalid data spec {path}") from None


def resolve_spec(
    data_path: str | Path | None = None,
    *,
    spec_path: str | Path | None = None,
    attribute_columns: Sequence[str] = (),
    **settings: Any,
) -> DataSpec:
    """The spec that applies: ``spec_path``, else ``data_spec.yaml`` in ``data_path``.

    ``attribute_columns`` (numeric) are added to the declared attributes and
    ``settings`` (``encoding``, ``delimiter``, ``decimal``, ``currency_symbols``;
    ``None`` = not given) override the file's read settings.
    """
    if spec_path is not None and str(spec_path).strip():
        spec = load_spec(spec_path)
    elif data_path is not None and (Path(data_path) / SPEC_FILE).is_file():
        spec = load_spec(Path(data_path) / SPEC_FILE)
    else:
        spec = DataSpec()
    try:
        return spec.with_numeric(attribute_columns).with_settings(**settings)
    except ValidationError as exc:
        raise _errors(exc, "invalid data settings") from None


# ------------------------------------------------------------ personal data
_PII_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email address", re.compile(r"(^|_)(e_?mail|mail)(_|$)|email")),
    ("phone number", re.compile(r"phone|(^|_)(mobile|tel|telephone|cell|fax)(_|$)")),
    ("date of birth", re.compile(r"birth|(^|_)dob(_|$)")),
    ("postal address", re.compile(r"address|street|(^|_)(zip|zipcode|postcode|postal_code)(_|$)")),
    (
        "name",
        re.compile(
            r"^(customer_|client_|full_|first_|last_|given_|family_|middle_|sur)?name$"
            r"|^(firstname|lastname|fullname|surname)$"
        ),
    ),
    (
        "identity number",
        re.compile(r"(^|_)(ssn|passport|national_id|tax_id|iban|card_number|credit_card)(_|$)"),
    ),
)


def personal_data_kind(column: str) -> str | None:
    """What kind of personal data a column name suggests (``None``: none).

    Names are compared after lower-casing and turning every run of non-letters
    into ``_`` (``E-Mail`` -> ``e_mail``).
    """
    norm = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_")
    norm = re.sub(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])", "_", norm)
    for what, pattern in _PII_RULES:
        if pattern.search(norm):
            return what
    return None
