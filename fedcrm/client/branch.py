"""A branch's own settings and data, resolved from its Flower node config.

Branch IT sets these keys in ``flower-supernode --node-config "..."``; the
simulation builds the same keys for each simulated branch:

==================== =======================================================
key                  meaning
==================== =======================================================
``branch-id``        the branch's id (as in the export's ``branch_id``)
``data-path``        directory with the branch export (customers/events), or
                     a prepared feature cache (``train.npz``/``test.npz``)
``data-url``         instead of ``data-path``: the branch's CRM database
                     (SQLAlchemy URL without password; see
                     :mod:`fedcrm.data.sql` for where the password comes from)
``data-url-file``    instead: a file readable only by its owner holding the URL
``data-spec``        the branch's data spec (default: ``data_spec.yaml`` in
                     ``data-path``)
``ledger-path``      the branch's append-only privacy ledger (JSON lines)
``signing-key``      the branch's Ed25519 ledger signing key (PEM)
``epsilon-ceiling``  the most epsilon the branch will ever spend (DP runs)
``delta``            the branch's delta (optional; default below 1/n)
``he-secret-context`` CKKS secret context (HE runs), from ``fedcrm keys init``
``model-dir``        where the branch exports models it keeps locally
``cache-dir``        where the branch keeps its computed features between
                     messages (optional; see :func:`load_branch_data`)
==================== =======================================================
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.config import TaskConfig, url_has_password
from fedcrm.data.dataset import FeatureSet
from fedcrm.errors import ConfigError

log = logging.getLogger(__name__)

KNOWN_KEYS = (
    "branch-id",
    "data-path",
    "data-url",
    "data-url-file",
    "data-spec",
    "ledger-path",
    "signing-key",
    "epsilon-ceiling",
    "delta",
    "he-secret-context",
    "model-dir",
    "cache-dir",
)
# Keys Flower itself puts into node configs.
_FLOWER_KEYS = ("partition-id", "num-partitions")
_SOURCE_KEYS = ("data-path", "data-url", "data-url-file")


@dataclass(frozen=True)
class BranchSettings:
    """Validated node config of one branch."""

    branch_id: str
    data_path: Path | None
    ledger_path: Path | None = None
    signing_key: Path | None = None
    epsilon_ceiling: float | None = None
    delta: float | None = None
    he_secret_context: Path | None = None
    model_dir: Path | None = None
    cache_dir: Path | None = None
    data_url: str | None = None
    data_url_file: Path | None = None
    data_spec: Path | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> BranchSettings:
        """Parse and check a node config.

        Raises
        ------
        ConfigError
            Naming the node-config key to fix.
        """
        unknown = sorted(set(node_config) - set(KNOWN_KEYS) - set(_FLOWER_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown node-config key(s) {unknown}; valid keys: {', '.join(KNOWN_KEYS)}"
            )
        if not str(node_config.get("branch-id", "")).strip():
            raise ConfigError('node config needs `branch-id` (e.g. --node-config "branch-id=...")')
        sources = [k for k in _SOURCE_KEYS if str(node_config.get(k, "")).strip()]
        if len(sources) != 1:
            raise ConfigError(
                "node config needs `data-path` (the export directory), or instead `data-url` "
                'or `data-url-file` for a database (e.g. --node-config "data-path=...")'
            )
        data_path = None
        if sources == ["data-path"]:
            data_path = Path(str(node_config["data-path"]))
            if not data_path.is_dir():
                raise ConfigError(f"node config `data-path`: directory {data_path} does not exist")
        data_url = str(node_config.get("data-url", "")).strip() or None
        if data_url is not None and url_has_password(data_url):
            raise ConfigError(
                "node config `data-url` must not hold a password (node configs show in process "
                "lists); use PGPASSWORD, ~/.pgpass or `data-url-file`"
            )

        def path(key: str, must_exist: bool = True) -> Path | None:
            value = str(node_config.get(key, "")).strip()
            if not value:
                return None
            p = Path(value)
            if must_exist and not p.exists():
                raise ConfigError(f"node config `{key}`: file {p} does not exist")
            return p

        def positive(key: str, upper: float | None = None) -> float | None:
            raw = node_config.get(key, "")
            if raw is None or str(raw).strip() == "":
                return None
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"node config `{key}` must be a number") from None
            if not math.isfinite(value) or value <= 0 or (upper is not None and value >= upper):
                bound = f" and below {upper}" if upper is not None else ""
                raise ConfigError(f"node config `{key}` must be a finite number above 0{bound}")
            return value

        return cls(
            branch_id=str(node_config["branch-id"]).strip(),
            data_path=data_path,
            ledger_path=path("ledger-path", must_exist=False),
            signing_key=path("signing-key"),
            epsilon_ceiling=positive("epsilon-ceiling"),
            delta=positive("delta", upper=1.0),
            he_secret_context=path("he-secret-context"),
            model_dir=path("model-dir", must_exist=False),
            cache_dir=path("cache-dir", must_exist=False),
            data_url=data_url,
            data_url_file=path("data-url-file"),
            data_spec=path("data-spec"),
        )

    def source(self) -> Any:
        """The branch's data source and spec (:class:`fedcrm.data.source.BranchSource`)."""
        from fedcrm.data.source import branch_source

        return branch_source(
            path=self.data_path,
            url=self.data_url,
            url_file=self.data_url_file,
            spec_path=self.data_spec,
        )


@dataclass
class BranchData:
    """A branch's train/test feature sets and its consent exclusions."""

    train: FeatureSet
    test: FeatureSet
    excluded_customers: int

    @property
    def n_tabular(self) -> int:
        """Number of tabular features."""
        return int(self.train.tabular.shape[1])


_CACHE: dict[tuple[Any, ...], BranchData] = {}


def write_feature_cache(out_dir: Path, train: FeatureSet, test: FeatureSet, excluded: int) -> None:
    """Write a prepared feature cache (used by the simulation for each branch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train.save(str(out_dir / "train.npz"))
    test.save(str(out_dir / "test.npz"))
    (out_dir / "excluded.json").write_text(json.dumps({"excluded_customers": excluded}))


def load_branch_data(settings: BranchSettings, task: TaskConfig, seed: int) -> BranchData:
    """Load (once per process) the branch's features for ``task``.

    A prepared feature cache is used as is; an export directory is validated,
    consent-filtered and featurised here, at the branch. In deployment every
    message runs in a fresh process, so with ``cache-dir`` set the features are
    also kept on disk (:mod:`fedcrm.client.feature_cache`) and the export is
    read again only when it, the task or the featurising code changed.
    """
    source = (settings.data_path, settings.data_url, settings.data_url_file, settings.data_spec)
    key = (*(str(x) for x in source), task.model_dump_json(), seed)
    if key in _CACHE:
        return _CACHE[key]
    prepared = settings.data_path
    if (
        prepared is not None
        and (prepared / "train.npz").exists()
        and (prepared / "test.npz").exists()
    ):
        data = _read_prepared(prepared)
    elif settings.cache_dir is not None and settings.data_path is not None:
        # A database has no cheap fingerprint of its rows (a consent change must take
        # effect), so only an export directory's features are kept on disk.
        from fedcrm.client.feature_cache import cached_features

        fingerprint = {
            "branch": settings.branch_id,
            "task": task.model_dump(mode="json"),
            "seed": seed,
            "spec": settings.source().spec.digest(),
        }
        data = cached_features(
            settings.cache_dir,
            settings.data_path,
            fingerprint=fingerprint,
            compute=lambda: _featurise(settings, task, seed),
            read=_read_prepared,
            write=lambda out, d: write_feature_cache(out, d.train, d.test, d.excluded_customers),
        )
    else:
        data = _featurise(settings, task, seed)
    if len(data.train) == 0 or len(data.test) == 0:
        raise ConfigError("the branch has no customers left for training or testing")
    if not np.isfinite(data.train.tabular).all():
        raise ConfigError("the branch's features contain non-finite values")
    _CACHE[key] = data
    return data


def _read_prepared(directory: Path) -> BranchData:
    excluded = json.loads((directory / "excluded.json").read_text())["excluded_customers"]
    return BranchData(
        FeatureSet.load(str(directory / "train.npz")),
        FeatureSet.load(str(directory / "test.npz")),
        int(excluded),
    )


def _featurise(settings: BranchSettings, task: TaskConfig, seed: int) -> BranchData:
    """Validate, consent-filter and featurise the branch export; split train/test."""
    from fedcrm.data.features import build_features, stratified_split

    crm = settings.source().load()
    branches = crm.branches()
    if settings.branch_id in branches:
        crm = crm.branch(settings.branch_id)
    elif len(branches) != 1:
        raise ConfigError(
            f"node config `branch-id`: the branch's data holds {len(branches)} "
            "branches and none has this id"
        )
    fs = build_features(
        crm, cutoff=task.cutoff, horizon_days=task.horizon_days, max_events=task.max_events
    )
    train_idx, test_idx = stratified_split(fs, test_fraction=task.test_fraction, seed=seed)
    return BranchData(fs.subset(train_idx), fs.subset(test_idx), int(sum(crm.excluded.values())))
