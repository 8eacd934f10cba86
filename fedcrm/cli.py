"""The ``fedcrm`` command.

``fedcrm simulate [Hydra overrides] [-m]`` runs a simulated federation; the
other sub-commands serve branch IT (``data``, ``node``), the central team
(``keys``, ``federation``) and compliance officers (``privacy``). Exit codes:
0 success, 1 the checked thing is invalid (data, ledger), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedcrm.errors import ConfigError, FedCRMError

console = Console(stderr=True)
out = Console()


# ------------------------------------------------------------------ simulate
def _check_overrides(overrides: Sequence[str]) -> list[str]:
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
        SyntheticDataConfig,
        TaskConfig,
    )

    sections = {
        "data": (SyntheticDataConfig, CdnowDataConfig, CsvDataConfig),
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
        key = ov.split("=", 1)[0]
        parts = key.split(".")
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

    try:
        argv = _check_overrides(argv)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    sys.argv = ["fedcrm simulate", *argv]

    @hydra.main(config_path="configs", config_name="config", version_base="1.3")
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
            raise SystemExit(2) from None
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        run_cfg = run_cfg.model_copy(update={"output_dir": str(out_dir)})
        try:
            summary = simulate(run_cfg, out_dir, console=console)
        except FedCRMError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise SystemExit(2) from None
        out.print(f"run directory: {out_dir}")
        auc = summary["final"].get("auc")
        return float(auc) if auc is not None else None

    task()
    return 0


# ---------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    """``fedcrm data validate|synth|import-cdnow``."""
    if args.data_cmd == "validate":
        from fedcrm.data.validate import validate_dir

        problems = validate_dir(Path(args.dir))
        if problems:
            for p in problems:
                out.print(str(p), markup=False, highlight=False)
            console.print(f"[red]{len(problems)} problem(s)[/red] in {args.dir}")
            return 1
        console.print(f"[green]valid[/green]: {args.dir} follows the data contract")
        return 0
    if args.data_cmd == "synth":
        import time

        from fedcrm.data.synthetic import write_synthetic

        t0 = time.perf_counter()
        path = write_synthetic(
            Path(args.out), branches=args.branches, customers=args.customers, seed=args.seed
        )
        console.print(
            f"wrote a synthetic CRM ({args.branches} branches, ~{args.customers} customers "
            f"each) to {path} in {time.perf_counter() - t0:.1f} s"
        )
        return 0
    if args.data_cmd == "import-cdnow":
        from fedcrm.data.cdnow import import_cdnow

        path = import_cdnow(Path(args.out), source=Path(args.source) if args.source else None)
        console.print(f"wrote CDNOW in the fedcrm data contract to {path}")
        return 0
    raise AssertionError(args.data_cmd)


# ----------------------------------------------------------- node and keys
def cmd_node(args: argparse.Namespace) -> int:
    """``fedcrm node init``: a branch's ledger signing key (and federation onboarding)."""
    from fedcrm.privacy.signing import generate_signing_key

    out_dir = Path(args.out)
    if getattr(args, "federation", None):
        from fedcrm.deploy.provision import onboard_branch  # type: ignore[import-not-found]

        onboard_branch(Path(args.federation), args.branch_id, out_dir)
        return 0
    priv, pub = generate_signing_key(out_dir, args.branch_id)
    console.print(
        f"branch {args.branch_id}: signing key {priv} (keep it at the branch, mode 0600); "
        f"public key {pub} (give it to the compliance officer)"
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``fedcrm keys init``: the CKKS key ceremony."""
    from fedcrm.crypto.ckks import key_ceremony

    secret, public = key_ceremony(Path(args.out), overwrite=args.overwrite)
    console.print(
        f"CKKS secret context (branches only, mode 0600): {secret}\n"
        f"CKKS public context (server; holds no secret key): {public}"
    )
    return 0


# ------------------------------------------------------------------ privacy
def cmd_privacy(args: argparse.Namespace) -> int:
    """``fedcrm privacy verify|report``."""
    from fedcrm.privacy.verify import format_table, verify_path

    if args.privacy_cmd == "verify":
        results = verify_path(Path(args.path), keys_dir=Path(args.keys) if args.keys else None)
        out.print(format_table(results), markup=False, highlight=False)
        bad = [r for r in results if not r.ok]
        for r in bad:
            for problem in r.problems:
                console.print(f"[red]branch {r.branch_id}[/red]: {problem}", markup=True)
        return 1 if bad or not results else 0
    if args.privacy_cmd == "report":
        import json

        from fedcrm.privacy.report import write_report

        path = Path(args.path)
        summary = None
        if (path / "summary.json").exists():
            summary = json.loads((path / "summary.json").read_text())
        written = write_report(path, Path(args.out), summary=summary)
        console.print(f"privacy report written to {written}")
        return 0
    raise AssertionError(args.privacy_cmd)


def cmd_plot(args: argparse.Namespace) -> int:
    """``fedcrm plot privacy-utility RUNS_DIR``: AUC vs epsilon over a sweep."""
    from fedcrm.sweeps import privacy_utility_plot

    path = privacy_utility_plot(
        Path(args.runs_dir),
        Path(args.out) if args.out else None,
        non_private=Path(args.non_private) if args.non_private else None,
    )
    console.print(f"privacy-utility plot written to {path}")
    return 0


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command but ``simulate`` (Hydra parses that)."""
    p = argparse.ArgumentParser(prog="fedcrm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("simulate", help="run a simulated federation (Hydra overrides, -m sweeps)")

    data = sub.add_parser("data", help="validate, generate or import CRM data")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    v = dsub.add_parser("validate", help="check a branch export against the data contract")
    v.add_argument("dir")
    s = dsub.add_parser("synth", help="write a synthetic multi-branch CRM")
    s.add_argument("--branches", type=int, default=5)
    s.add_argument("--customers", type=int, default=2000, help="customers per branch (mean)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    c = dsub.add_parser("import-cdnow", help="convert the CDNOW transaction log")
    c.add_argument("--out", required=True)
    c.add_argument("--source", help="CDNOW_master.txt (default: the copy in `lifetimes`)")

    node = sub.add_parser("node", help="branch onboarding")
    nsub = node.add_subparsers(dest="node_cmd", required=True)
    ni = nsub.add_parser("init", help="create a branch's ledger signing key")
    ni.add_argument("--branch-id", required=True)
    ni.add_argument("--out", required=True)
    ni.add_argument("--federation", help="an existing `fedcrm federation init` directory")

    keys = sub.add_parser("keys", help="homomorphic-encryption keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    ki = ksub.add_parser("init", help="CKKS key ceremony")
    ki.add_argument("--out", required=True)
    ki.add_argument("--overwrite", action="store_true")

    priv = sub.add_parser("privacy", help="verify ledgers, write the compliance report")
    psub = priv.add_subparsers(dest="privacy_cmd", required=True)
    pv = psub.add_parser("verify", help="verify signatures, hash chain and epsilon")
    pv.add_argument("path", help="a ledger file, a directory of ledgers, or a run directory")
    pv.add_argument("--keys", help="directory of <branch_id>.pub files")
    pr = psub.add_parser("report", help="self-contained HTML privacy report")
    pr.add_argument("path", help="a run directory or a ledger directory")
    pr.add_argument("--out", required=True)

    plot = sub.add_parser("plot", help="plots across runs")
    plsub = plot.add_subparsers(dest="plot_cmd", required=True)
    pu = plsub.add_parser("privacy-utility", help="AUC vs epsilon over a sweep directory")
    pu.add_argument("runs_dir")
    pu.add_argument("--out")
    pu.add_argument("--non-private", help="a non-private run directory for the reference line")

    try:
        from fedcrm.deploy.cli import add_federation_parser  # type: ignore[import-not-found]

        add_federation_parser(sub)
    except ImportError:
        pass
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedcrm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "simulate":
        return cmd_simulate(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {
        "data": cmd_data,
        "node": cmd_node,
        "keys": cmd_keys,
        "privacy": cmd_privacy,
        "plot": cmd_plot,
    }
    handler = getattr(args, "handler", None) or handlers[args.cmd]
    try:
        return int(handler(args))
    except FedCRMError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 1 if args.cmd in ("data", "privacy") else 2


if __name__ == "__main__":
    sys.exit(main())
