"""A branch's own settings and data, resolved from its Flower node config.

Branch IT sets these keys in ``flower-supernode --node-config "..."``; the
simulation builds the same keys for each simulated branch:

==================== =======================================================
key                  meaning
==================== =======================================================
``branch-id``        the branch's id (as in the export's ``branch_id``; a path-safe
                     id, :func:`fedcrm.identity.check_id`)
``data-path``        directory with the branch export (customers/events), or
                     a prepared feature set (``features.npz``)
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
``agreement-key``    the branch's X25519 key-agreement key (PEM; encrypted jobs)
``roster``           optional: the roster (branch ids and public keys) the branch
                     trusts for encrypted jobs; a job with another is refused
``min-contributors`` fewest contributions an aggregate must hold before this
                     branch decrypts it (default 3; a job may ask for more)
``model-dir``        where the branch exports models it keeps locally
``cache-dir``        where the branch keeps its computed features between
                     messages (optional; see :func:`load_branch_data`)
``state-dir``        the branch's private state: its split key, the ledger's
                     anchor, the replies it keeps (default: ``state/`` beside
                     the ledger)
``test-fraction``    share of customers held out for evaluation (default
                     0.2); the split is the branch's, fixed across runs
``min-cell-count``   smallest group of customers an evaluation statistic
                     covers when the job has no DP (default 10)
``rng-seed``         makes the branch's release randomness reproducible
                     (simulations and tests; ``fedcrm node start`` refuses it)
==================== =======================================================

Every key has a ``branch.*`` twin (``branch.rng_seed``, ``branch.min_cell_count``,
...) that ``fedcrm simulate`` passes to its simulated branches.
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

from fedcrm.config import TaskConfig
from fedcrm.config_sections import url_has_password
from fedcrm.data.dataset import FeatureSet
from fedcrm.data.split import DEFAULT_TEST_FRACTION
from fedcrm.errors import ConfigError
from fedcrm.ids import check_id
from fedcrm.models.evaluation import DEFAULT_MIN_COUNT

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
    "agreement-key",
    "roster",
    "min-contributors",
    "model-dir",
    "cache-dir",
    "state-dir",
    "test-fraction",
    "min-cell-count",
    "rng-seed",
)
# Keys Flower itself puts into node configs.
_FLOWER_KEYS = ("partition-id", "num-partitions")
_SOURCE_KEYS = ("data-path", "data-url", "data-url-file")


def _node_source(node_config: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    """Check the keys, the branch id and the single data source; return (data path, data URL)."""
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
    return data_path, data_url


def _node_path(node_config: Mapping[str, Any], key: str, must_exist: bool = True) -> Path | None:
    """The path set for ``key`` (``None`` when unset); checked to exist unless told not to."""
    value = str(node_config.get(key, "")).strip()
    if not value:
        return None
    p = Path(value)
    if must_exist and not p.exists():
        raise ConfigError(f"node config `{key}`: file {p} does not exist")
    return p


def _node_positive(
    node_config: Mapping[str, Any], key: str, upper: float | None = None
) -> float | None:
    """The finite number above 0 (and below ``upper``) set for ``key``; ``None`` when unset."""
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


def _node_whole(node_config: Mapping[str, Any], key: str, low: int) -> int | None:
    """The whole number of at least ``low`` set for ``key``; ``None`` when unset."""
    raw = node_config.get(key, "")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"node config `{key}` must be a whole number") from None
    if value < low:
        raise ConfigError(f"node config `{key}` must be >= {low}")
    return value


@dataclass(frozen=True)
class BranchSettings:
    """Validated node config of one branch."""

    branch_id: str
    data_path: Path | None
    ledger_path: Path | None = None
    signing_key: Path | None = None
    epsilon_ceiling: float | None = None
    delta: float | None = None
    agreement_key: Path | None = None
    roster: Path | None = None
    min_contributors: int | None = None
    model_dir: Path | None = None
    cache_dir: Path | None = None
    data_url: str | None = None
    data_url_file: Path | None = None
    data_spec: Path | None = None
    state_dir: Path | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    min_cell_count: int = DEFAULT_MIN_COUNT
    rng_seed: int | None = None

    @property
    def private_state(self) -> Path | None:
        """The branch's private state folder (``state-dir``, else ``state/`` beside the ledger)."""
        if self.state_dir is not None:
            return self.state_dir
        if self.ledger_path is not None:
            return self.ledger_path.parent / "state"
        return None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> BranchSettings:
        """Parse and check a node config.

        Raises
        ------
        ConfigError
            Naming the node-config key to fix.
        """
        data_path, data_url = _node_source(node_config)
        test_fraction = _node_positive(node_config, "test-fraction", upper=1.0)
        return cls(
            branch_id=check_id(str(node_config["branch-id"]).strip(), "node config `branch-id`"),
            data_path=data_path,
            ledger_path=_node_path(node_config, "ledger-path", must_exist=False),
            signing_key=_node_path(node_config, "signing-key"),
            epsilon_ceiling=_node_positive(node_config, "epsilon-ceiling"),
            delta=_node_positive(node_config, "delta", upper=1.0),
            agreement_key=_node_path(node_config, "agreement-key"),
            roster=_node_path(node_config, "roster"),
            min_contributors=_node_whole(node_config, "min-contributors", 2),
            model_dir=_node_path(node_config, "model-dir", must_exist=False),
            cache_dir=_node_path(node_config, "cache-dir", must_exist=False),
            data_url=data_url,
            data_url_file=_node_path(node_config, "data-url-file"),
            data_spec=_node_path(node_config, "data-spec"),
            state_dir=_node_path(node_config, "state-dir", must_exist=False),
            test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
            min_cell_count=_node_whole(node_config, "min-cell-count", 1) or DEFAULT_MIN_COUNT,
            rng_seed=_node_whole(node_config, "rng-seed", 0),
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
    """A branch's train/test feature sets, its consent exclusions and its split's id."""

    train: FeatureSet
    test: FeatureSet
    excluded_customers: int
    split_id: str | None = None
    validation: np.ndarray | None = None
    """Of the test customers, the validation half (evaluation releases keep it apart)."""

    @property
    def n_tabular(self) -> int:
        """Number of tabular features."""
        return int(self.train.tabular.shape[1])

    @property
    def n_customers(self) -> int:
        """Customers of the branch in the task (train and test)."""
        return len(self.train) + len(self.test)


_CACHE: dict[tuple[Any, ...], BranchData] = {}
PREPARED = "features.npz"
"""A prepared feature set (every customer of the branch, not split), as the simulation writes."""


def write_feature_cache(out_dir: Path, features: FeatureSet, excluded: int) -> None:
    """Write a prepared feature set (used by the simulation for each branch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    features.save(str(out_dir / PREPARED))
    (out_dir / "excluded.json").write_text(json.dumps({"excluded_customers": excluded}))


def split_key(settings: BranchSettings) -> bytes:
    """The branch's split key: from ``rng-seed``, else kept in its state folder, else public."""
    from fedcrm.data.split import derived_split_key, load_or_create_key, public_split_key

    if settings.rng_seed is not None:
        return derived_split_key(settings.rng_seed, settings.branch_id)
    if settings.private_state is not None:
        return load_or_create_key(settings.private_state)
    return public_split_key(settings.branch_id)


def split_branch(
    features: FeatureSet, branch_id: str, key: bytes, test_fraction: float
) -> tuple[FeatureSet, FeatureSet, str]:
    """Train and test customers of the branch's fixed split, and the split's public id."""
    from fedcrm.data.split import holdout_mask, split_id

    test = holdout_mask(features.customer_ids, branch_id, key, test_fraction)
    return (
        features.subset(np.flatnonzero(~test)),
        features.subset(np.flatnonzero(test)),
        split_id(branch_id, key, test_fraction),
    )


def load_branch_data(settings: BranchSettings, task: TaskConfig) -> BranchData:
    """Load (once per process) the branch's features for ``task``, split as the branch splits.

    A prepared feature set is used as is; an export directory is validated,
    consent-filtered and featurised here, at the branch. In deployment every
    message runs in a fresh process, so with ``cache-dir`` set the features are
    also kept on disk (:mod:`fedcrm.client.feature_cache`) and the export is
    read again only when it, the task or the featurising code changed. The
    train/test split is the branch's own (:mod:`fedcrm.data.split`): nothing in
    the job moves a customer between the sides.
    """
    key_bytes = split_key(settings)
    source = (settings.data_path, settings.data_url, settings.data_url_file, settings.data_spec)
    key = (
        *(str(x) for x in source),
        settings.branch_id,
        task.model_dump_json(),
        settings.test_fraction,
        key_bytes,
    )
    if key in _CACHE:
        return _CACHE[key]
    prepared = settings.data_path
    if prepared is not None and (prepared / PREPARED).exists():
        features, excluded = _read_prepared(prepared)
    elif settings.cache_dir is not None and settings.data_path is not None:
        # A database has no cheap fingerprint of its rows (a consent change must take
        # effect), so only an export directory's features are kept on disk.
        from fedcrm.client.feature_cache import cached_features

        fingerprint = {
            "branch": settings.branch_id,
            "task": task.model_dump(mode="json"),
            "spec": settings.source().spec.digest(),
        }
        features, excluded = cached_features(
            settings.cache_dir,
            settings.data_path,
            fingerprint=fingerprint,
            compute=lambda: _featurise(settings, task),
            read=_read_prepared,
            write=lambda out, d: write_feature_cache(out, d[0], d[1]),
        )
    else:
        features, excluded = _featurise(settings, task)
    train, test, split = split_branch(
        features, settings.branch_id, key_bytes, settings.test_fraction
    )
    if len(train) == 0 or len(test) == 0:
        raise ConfigError("the branch has no customers left for training or testing")
    if not np.isfinite(train.tabular).all():
        raise ConfigError("the branch's features contain non-finite values")
    from fedcrm.data.split import validation_mask

    validation = validation_mask(
        test.customer_ids, settings.branch_id, key_bytes, settings.test_fraction
    )
    data = BranchData(train, test, excluded, split, validation)
    _CACHE[key] = data
    return data


def _read_prepared(directory: Path) -> tuple[FeatureSet, int]:
    excluded = json.loads((directory / "excluded.json").read_text())["excluded_customers"]
    return FeatureSet.load(str(directory / PREPARED)), int(excluded)


def _featurise(settings: BranchSettings, task: TaskConfig) -> tuple[FeatureSet, int]:
    """Validate, consent-filter and featurise the branch's data (export or database)."""
    from fedcrm.data.contract import branch_id_mismatch
    from fedcrm.data.features import build_features

    crm = settings.source().load()
    note = branch_id_mismatch(crm, settings.branch_id)
    if note:
        log.warning("%s", note)
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
    return fs, int(sum(crm.excluded.values()))
