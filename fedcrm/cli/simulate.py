"""``fedcrm simulate [Hydra overrides] [-m]``: a simulated federation (researchers).

Hydra parses the command line itself (overrides, ``-m`` sweeps, ``--cfg job``),
so ``fedcrm.cli.main`` hands ``simulate`` over before argparse sees it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape

from fedcrm.cli._common import EXIT_USAGE, console, out
from fedcrm.errors import ConfigError, FedCRMError


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """Catch unknown keys before Hydra (listing the valid ones) and ease dict overrides."""
    from fedcrm.config import (
        BranchConfig,
        CdnowDataConfig,
        CsvDataConfig,
        FederationConfig,
        GBDTModelConfig,
        LSTMModelConfig,
        PrivacyConfig,
        RunConfig,
        SqlDataConfig,
        SyntheticDataConfig,
        TaskConfig,
    )
    from fedcrm.config_sections import url_has_password

    sections = {
        "data": (SyntheticDataConfig, CdnowDataConfig, CsvDataConfig, SqlDataConfig),
        "model": (LSTMModelConfig, GBDTModelConfig),
        "privacy": (PrivacyConfig,),
        "federation": (FederationConfig,),
        "task": (TaskConfig,),
        "branch": (BranchConfig,),
    }
    fixed = []
    for ov in overrides:
        if "=" not in ov or ov.startswith(("+", "~", "hydra.", "hydra/")) or ov.startswith("-"):
            fixed.append(ov)
            continue
        key, value = ov.split("=", 1)
        parts = key.split(".")
        if key == "data.url" and url_has_password(value.strip("'\"")):
            # Refused before Hydra writes the overrides into the run directory.
            raise ConfigError(
                "data.url must not hold a password (it would be written to the run "
                "directory); use PGPASSWORD, ~/.pgpass or data.url_file"
            )
        if len(parts) == 1:
            if key not in RunConfig.model_fields:
                valid = ", ".join(sorted(RunConfig.model_fields))
                raise ConfigError(f"unknown key `{key}`; valid top-level keys: {valid}")
        elif parts[0] in sections:
            if parts[1:2] == ["epsilon_ceilings"] and parts[0] == "branch" and len(parts) == 3:
                fixed.append("+" + ov if not ov.startswith("+") else ov)
                continue
            fields = set().union(*(m.model_fields for m in sections[parts[0]]))
            if parts[1] not in fields or len(parts) > 2:
                raise ConfigError(
                    f"unknown key `{key}`; valid keys under `{parts[0]}`: "
                    + ", ".join(sorted(fields))
                )
        fixed.append(ov)
    return fixed


def cmd_simulate(argv: list[str]) -> int:
    """Compose the config with Hydra (overrides, ``-m`` sweeps) and simulate."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from fedcrm.config import CONFIG_DIR

    try:
        argv = check_overrides(argv)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_USAGE
    sys.argv = ["fedcrm simulate", *argv]

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig

        from fedcrm.config import validate_config
        from fedcrm.simulations.simulate import simulate

        raw = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(raw, dict)
        try:
            run_cfg = validate_config(raw)
        except ConfigError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise SystemExit(EXIT_USAGE) from None
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        run_cfg = run_cfg.model_copy(update={"output_dir": str(out_dir)})
        try:
            summary = simulate(run_cfg, out_dir, console=console)
        except FedCRMError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise SystemExit(EXIT_USAGE) from None
        out.print(f"run directory: {out_dir}")
        auc = summary["final"].get("auc")
        return float(auc) if auc is not None else None

    task()
    return 0
