"""Shared test settings: small thread counts so tests share 2 cores well."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch

torch.set_num_threads(1)


# ---------------------------------------------------------------------------
# Scoring tests (tests/models/test_bundle.py, test_scoring.py, tests/cli/...):
# a tiny export and a tiny model of each kind trained on it, built once.

import datetime as _dt  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

SCORING_CUTOFF = _dt.date(2024, 10, 2)


@dataclass
class ScoringWorld:
    """A one-branch synthetic export and models trained on its features at ``cutoff``.

    ``as_of`` is the day before ``cutoff``: scoring as of it sees exactly the
    training features.
    """

    export: Path
    train: Any  # FeatureSet at the cutoff (with labels)
    task: Any
    lstm_cfg: Any
    lstm_weights: list
    gbdt_cfg: Any
    gbdt: Any
    cutoff: _dt.date = SCORING_CUTOFF
    as_of: _dt.date = SCORING_CUTOFF - _dt.timedelta(days=1)

    def model(self, kind: str) -> tuple[Any, Any]:
        """``(model, config)`` of ``kind`` (``"lstm"`` or ``"gbdt"``)."""
        if kind == "lstm":
            return self.lstm_weights, self.lstm_cfg
        return self.gbdt, self.gbdt_cfg

    def logits(self, kind: str) -> Any:
        """The trained model's own logits of the training customers (clipped at 12)."""
        from fedcrm.models.evaluation import logit

        if kind == "gbdt":
            return logit(self.gbdt.predict_proba(self.train.tabular)[:, 1])
        from fedcrm.models.lstm import build_model, set_weights
        from fedcrm.models.train import predict_proba

        model = build_model(self.lstm_cfg, self.train.tabular.shape[1])
        set_weights(model, self.lstm_weights)
        return logit(predict_proba(model, self.train))


@pytest.fixture(scope="session")
def scoring_world(tmp_path_factory: pytest.TempPathFactory) -> ScoringWorld:
    """See :class:`ScoringWorld` (about 3 s, once per session)."""
    from fedcrm.config import GBDTModelConfig, LSTMModelConfig, TaskConfig
    from fedcrm.data.features import build_features
    from fedcrm.data.loader import load_crm
    from fedcrm.data.synthetic import write_synthetic
    from fedcrm.models.gbdt import HistGBDT
    from fedcrm.models.lstm import build_model, get_weights
    from fedcrm.models.train import train_local

    export = write_synthetic(
        tmp_path_factory.mktemp("scoring") / "export", branches=1, customers=600, seed=5
    )
    task = TaskConfig(cutoff=SCORING_CUTOFF, max_events=20)
    fs = build_features(load_crm(export), cutoff=SCORING_CUTOFF, horizon_days=90, max_events=20)
    lstm_cfg = LSTMModelConfig(embedding_dim=4, hidden_size=8)
    lstm = build_model(lstm_cfg, fs.tabular.shape[1], seed=0)
    train_local(lstm, fs, epochs=2, batch_size=64, learning_rate=0.02, seed=0)
    gbdt_cfg = GBDTModelConfig(n_estimators=15, max_depth=3)
    gbdt = HistGBDT.from_config(gbdt_cfg).fit(fs.tabular, fs.labels, feature_names=fs.tabular_names)
    return ScoringWorld(export, fs, task, lstm_cfg, get_weights(lstm), gbdt_cfg, gbdt)


# ------------------------------------------------------------------ PostgreSQL
import glob  # noqa: E402
import pwd  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL server on 127.0.0.1 (superuser ``postgres`` over its socket)."""

    port: int
    socket_dir: Path

    def execute(self, sql: str, *, dbname: str = "postgres") -> None:
        """Run ``sql`` as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname,
            autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute(sql)

    def url(self, user: str, dbname: str, password: str | None = None) -> str:
        """A TCP URL (password only when given)."""
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{dbname}"


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for one test module, started as an unprivileged user.

    ``initdb`` and ``postgres`` refuse to run as root, so under root (CI) they
    run as ``nobody``; data and socket live in a fresh temporary directory.
    """
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    base = Path(tempfile.mkdtemp(prefix="fedcrm-pg-"))
    as_user: dict[str, object] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C", "LC_ALL": "C"}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(base / "data"), "-U", "postgres", "-E", "UTF8",
         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
        check=True, capture_output=True, env=env, cwd=base, **as_user,  # type: ignore[arg-type]
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(base / "data"), "-p", str(port), "-k", str(base),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=base,
        **as_user,  # type: ignore[arg-type]
    )  # fmt: skip
    server = PostgresServer(port, base)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.execute("SELECT 1")
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                shutil.rmtree(base, ignore_errors=True)
                pytest.fail("the PostgreSQL test server did not start")
            time.sleep(0.2)
    try:
        yield server
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)
