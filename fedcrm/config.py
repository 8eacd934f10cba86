"""Typed, validated view of the composed Hydra configuration.

Hydra composes YAML (``fedcrm/configs``) and command-line overrides; pydantic
checks the result. Code receives a frozen :class:`RunConfig`, never a raw dict.
A wrong key or value fails before any work with a message that lists the valid
choices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedcrm.config_sections import (
    CdnowDataConfig,
    CsvDataConfig,
    DataConfig,
    GBDTModelConfig,
    LSTMModelConfig,
    ModelConfig,
    SqlDataConfig,
    SyntheticDataConfig,
    TaskConfig,
    _Strict,
)
from fedcrm.errors import ConfigError
from fedcrm.ids import is_valid_id

CONFIG_DIR = Path(__file__).parent / "configs"


# ------------------------------------------------------------------ privacy
class PrivacyConfig(_Strict):
    """Differential privacy and homomorphic encryption settings of a run."""

    mode: Literal["none", "dp", "he", "dp_he"] = "none"
    target_epsilon: float | None = Field(None, gt=0.0)
    # "job": the noise spends target_epsilon for this job alone (a branch refuses
    # the rounds that would pass its ceiling); "remaining": each branch plans its
    # noise against its own ledger so the job ends within min(ceiling, spent +
    # target_epsilon) - see fedcrm.privacy.planning.
    target: Literal["job", "remaining"] = "job"
    noise_multiplier: float | None = Field(None, gt=0.0)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["prv", "rdp"] = "prv"
    engine: Literal["fast", "opacus"] = "fast"
    # Evaluation statistics under DP are a release of the test customers: their
    # epsilon (null: the training target, or 1 with a fixed noise multiplier), and
    # whether every round's incoming model is evaluated (each a release) or only
    # the final one.
    evaluation_epsilon: float | None = Field(None, gt=0.0)
    evaluate_each_round: bool = False

    @property
    def dp(self) -> bool:
        """Whether differential privacy is on."""
        return self.mode in ("dp", "dp_he")

    @property
    def he(self) -> bool:
        """Whether updates are homomorphically encrypted."""
        return self.mode in ("he", "dp_he")

    @property
    def evaluation_budget(self) -> float:
        """Epsilon of every evaluation release of a run together (test customers)."""
        if self.evaluation_epsilon is not None:
            return self.evaluation_epsilon
        return self.target_epsilon if self.target_epsilon is not None else 1.0

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if self.dp and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "with privacy=dp give exactly one of privacy.target_epsilon and "
                "privacy.noise_multiplier (set the other to null)"
            )
        if self.dp and self.target == "remaining" and self.target_epsilon is None:
            raise ValueError(
                "privacy.target=remaining plans each branch's noise from an epsilon: give "
                "privacy.target_epsilon (and privacy.noise_multiplier=null)"
            )
        return self


# --------------------------------------------------------------- federation
class FederationConfig(_Strict):
    """Rounds, sampling and simulation resources."""

    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(1, ge=1)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    min_branches: int = Field(2, ge=1)
    num_cpus_per_branch: float = Field(1, gt=0)
    ray_address: str | None = None
    round_timeout: float = Field(600, gt=0)
    # Deployment only: the longest a standby message holds a branch's SuperNode so
    # that it asks for its next message instead of sleeping 3 s; 0 turns standby
    # messages off (see the README's Latency section).
    keep_warm_s: float = Field(10, ge=0, le=60)
    # Encrypted jobs: the fewest contributions a branch decrypts an aggregate of
    # (a branch's own node config may ask for more, never fewer than 3).
    min_contributors: int = Field(3, ge=3, le=64)


class BranchConfig(_Strict):
    """Branch-side settings of simulated branches (the server never reads these).

    Each is the twin of a node-config key a deployed branch sets
    (:mod:`fedcrm.client.branch`): ``epsilon_ceiling`` / ``epsilon-ceiling``,
    ``delta``, ``min_cell_count`` / ``min-cell-count``, ``test_fraction`` /
    ``test-fraction`` (null: ``task.test_fraction``), ``rng_seed`` /
    ``rng-seed`` (null: derived from ``seed`` so that simulations repeat; ``os``:
    the operating system's randomness, as a deployed branch has).
    """

    epsilon_ceiling: float | None = Field(None, gt=0.0)
    epsilon_ceilings: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    min_cell_count: int = Field(10, ge=1)
    test_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    rng_seed: int | Literal["os"] | None = None

    def ceiling_for(self, branch_id: str) -> float | None:
        """The epsilon ceiling of ``branch_id`` (a per-branch value wins)."""
        return self.epsilon_ceilings.get(branch_id, self.epsilon_ceiling)


class RunConfig(_Strict):
    """The whole composed configuration of one run."""

    data: DataConfig = Field(default_factory=SyntheticDataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=LSTMModelConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    branch: BranchConfig = Field(default_factory=BranchConfig)
    seed: int = 42
    baseline: bool = True
    release: bool = True
    resume: bool = False
    output_dir: str = "runs/latest"
    # Calibration map fitted from the pooled evaluation releases into the model bundle.
    calibration: Literal["platt", "isotonic", "none"] = "platt"


_SECTIONS: dict[str, type[BaseModel]] = {
    "data": SyntheticDataConfig,
    "task": TaskConfig,
    "model": LSTMModelConfig,
    "privacy": PrivacyConfig,
    "federation": FederationConfig,
    "branch": BranchConfig,
}


def _valid_keys(raw: Mapping[str, Any], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (for error messages)."""
    model: type[BaseModel] = RunConfig
    if loc and loc[0] in _SECTIONS:
        model = _SECTIONS[str(loc[0])]
        section = raw.get(str(loc[0]), {})
        kind = section.get("kind") or section.get("name") if isinstance(section, Mapping) else None
        candidates = (
            CdnowDataConfig,
            CsvDataConfig,
            SqlDataConfig,
            GBDTModelConfig,
            SyntheticDataConfig,
        )
        for candidate in candidates:
            fields = candidate.model_fields
            tag = fields.get("kind") or fields.get("name")
            if tag is not None and tag.default == kind and loc[0] in ("data", "model"):
                model = candidate
    return sorted(model.model_fields)


def validate_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a composed configuration.

    Parameters
    ----------
    raw
        The composed configuration as plain containers (``OmegaConf.to_container``).

    Returns
    -------
    RunConfig
        The frozen, typed configuration.

    Raises
    ------
    ConfigError
        Listing every wrong key or value with the valid choices.
    """
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, int))
            # Drop the discriminator tag pydantic inserts into union locations.
            tags = ("synthetic", "cdnow", "csv", "sql", "lstm", "gbdt")
            loc = tuple(p for p in loc if p not in tags)
            where = ".".join(str(p) for p in loc) or "<root>"
            if err["type"] == "extra_forbidden":
                valid = ", ".join(_valid_keys(raw, loc[:-1]))
                lines.append(f"  {where}: unknown key; valid keys here: {valid}")
            else:
                lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose the packaged Hydra config with ``overrides`` and validate it.

    For programmatic use and tests; ``fedcrm simulate`` uses Hydra's own entry
    point so that ``-m`` sweeps work.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc)) from None
    assert isinstance(raw, dict)
    return validate_config(raw)


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class JobSpec(_Strict):
    """What the server tells every branch about the job (sent as JSON each exchange).

    It carries no branch-side setting: ceilings, key paths and data paths live
    in each branch's node config.
    """

    run_id: str
    model: ModelConfig
    task: TaskConfig
    privacy: PrivacyConfig
    rounds: int
    local_epochs: int
    seed: int
    release: bool = True
    min_contributors: int = 3

    @field_validator("run_id")
    @classmethod
    def _path_safe_run_id(cls, value: str) -> str:
        # Branches name files after it (model-<run_id>.npz): it must never be a path.
        if not is_valid_id(value):
            raise ValueError("run_id must be a path-safe id (letters, digits, '-', '_')")
        return value

    @classmethod
    def from_run(cls, cfg: RunConfig, run_id: str) -> JobSpec:
        """The job part of a run configuration (without key paths)."""
        return cls(
            run_id=run_id,
            model=cfg.model,
            task=cfg.task,
            privacy=cfg.privacy,
            rounds=cfg.federation.rounds,
            local_epochs=cfg.federation.local_epochs,
            seed=cfg.seed,
            release=cfg.release,
            min_contributors=cfg.federation.min_contributors,
        )
