"""What a run learns from and what it learns: the data, task and model sections.

A run configuration's ``data`` section says where a branch's customers come
from (synthetic data, CDNOW, a CSV export or a database, told apart by
``kind``), its ``task`` section defines the churn task (cutoff, label horizon,
test share, sequence length) and its ``model`` section the model and its
hyperparameters (an LSTM or gradient-boosted trees, told apart by ``name``).
Each is a strict, frozen pydantic model: an unknown key or a value out of
range is refused. :mod:`fedcrm.config` puts them together with the privacy,
federation and branch sections into a :class:`~fedcrm.config.RunConfig`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------- data
class SyntheticDataConfig(_Strict):
    """Synthetic CRM made by :mod:`fedcrm.data.synthetic`."""

    kind: Literal["synthetic"] = "synthetic"
    branches: int = Field(5, ge=1, le=10_000)
    customers: int = Field(2000, ge=10)
    seed: int | None = None


class CdnowDataConfig(_Strict):
    """The CDNOW transaction log, one branch per acquisition month."""

    kind: Literal["cdnow"] = "cdnow"
    source: str | None = None


Delimiter = Literal["auto", "comma", "semicolon", "tab", "pipe"]
_PASSWORD_IN_URL = re.compile(r"^[^:/]+://[^/@]*:[^/@]*@")


class CsvDataConfig(_Strict):
    """A branch export on disk following the data contract.

    ``spec`` names the data spec (default: ``data_spec.yaml`` in ``path``); the
    read settings, when set, win over the spec's (``None``: the spec's).
    """

    kind: Literal["csv"] = "csv"
    path: str
    spec: str | None = None
    attribute_columns: tuple[str, ...] = ()
    encoding: str | None = None
    delimiter: Delimiter | None = None
    decimal: Literal["dot", "comma"] | None = None
    currency_symbols: Literal["error", "strip"] | None = None


class SqlDataConfig(_Strict):
    """The contract tables in a database (the data spec's ``sql`` section says where).

    ``url`` must not hold a password (it is written to ``config.yaml``): the
    password comes from ``PGPASSWORD``, ``~/.pgpass``, or ``url_file``, a file
    readable only by its owner that holds the whole URL.
    """

    kind: Literal["sql"] = "sql"
    url: str | None = None
    url_file: str | None = None
    spec: str | None = None
    attribute_columns: tuple[str, ...] = ()
    decimal: Literal["dot", "comma"] | None = None
    currency_symbols: Literal["error", "strip"] | None = None

    @model_validator(mode="after")
    def _one_url_without_password(self) -> SqlDataConfig:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of data.url and data.url_file")
        if self.url is not None and url_has_password(self.url):
            raise ValueError(
                "data.url must not hold a password; use PGPASSWORD, ~/.pgpass or data.url_file"
            )
        return self


def url_has_password(url: str) -> bool:
    """Whether a ``scheme://user:password@host`` URL carries a password."""
    return bool(_PASSWORD_IN_URL.match(url.strip()))


DataConfig = Annotated[
    SyntheticDataConfig | CdnowDataConfig | CsvDataConfig | SqlDataConfig,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------- task
class TaskConfig(_Strict):
    """The churn task: features before ``cutoff``, label from ``horizon_days`` after it."""

    name: Literal["churn"] = "churn"
    cutoff: dt.date | None = None
    horizon_days: int = Field(90, ge=1, le=3650)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_events: int = Field(50, ge=1, le=1000)


# -------------------------------------------------------------------- model
class LSTMModelConfig(_Strict):
    """Embeddings + LSTM over the event sequence (+ tabular features) -> churn logit."""

    name: Literal["lstm"] = "lstm"
    embedding_dim: int = Field(16, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1, le=4)
    use_tabular: bool = True
    learning_rate: float = Field(0.003, gt=0.0)
    batch_size: int = Field(64, ge=1)


class GBDTModelConfig(_Strict):
    """Histogram gradient-boosted trees for the logistic loss."""

    name: Literal["gbdt"] = "gbdt"
    n_estimators: int = Field(50, ge=1)
    max_depth: int = Field(4, ge=1, le=12)
    learning_rate: float = Field(0.3, gt=0.0, le=1.0)
    reg_lambda: float = Field(1.0, ge=0.0)
    gamma: float = Field(0.0, ge=0.0)
    min_child_weight: float = Field(1.0, ge=0.0)
    max_bin: int = Field(32, ge=2, le=256)
    mode: Literal["exact", "batched"] = "exact"
    trees_per_exchange: int = Field(10, ge=1)
    subsample: float = Field(1.0, gt=0.0, le=1.0)


ModelConfig = Annotated[LSTMModelConfig | GBDTModelConfig, Field(discriminator="name")]
