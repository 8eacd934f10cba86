"""Approved apps: ``fedcrm node app-hash``, ``--approve-app`` and the FAB check.

A real ``flwr build`` gives the reference hash; the check is run on Flower's
own ``install_from_fab`` (the step ``run_clientapp`` takes before loading any
app code). The refusal reaching the server through real Flower processes is
in ``tests/integration/test_deployment.py``.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedcrm.deploy.approval import (
    AppNotApprovedError,
    approved_from_env,
    check_fab,
    fab_hash_of_dir,
    guard_fab_install,
    resolve_approved,
)
from fedcrm.errors import ConfigError

from .conftest import node_start, run_cli

# Flower's FAB build uses a pathspec API that warns on every pattern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "approvalprobe"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "fedcrm-tests"

[tool.flwr.app.components]
serverapp = "probe:server"
clientapp = "probe:client"
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A small Flower app directory."""
    d = tmp_path / "app"
    d.mkdir()
    (d / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (d / "probe.py").write_text("server = client = None\n")
    return d


def _flwr_build(app: Path, where: Path) -> Path:
    """``flwr build`` as the central team would run it; returns the .fab file."""
    where.mkdir()
    flwr = Path(sys.executable).with_name("flwr")
    res = subprocess.run(
        [str(flwr), "build", "--app", str(app)],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    (fab,) = where.glob("*.fab")
    return fab


def test_app_hash_is_the_hash_flwr_build_gives(
    app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fab = _flwr_build(app, tmp_path / "built")
    want = hashlib.sha256(fab.read_bytes()).hexdigest()
    assert run_cli(["node", "app-hash", str(app)]) == 0
    assert capsys.readouterr().out.strip() == want
    assert want[:8] in fab.name  # Flower names the file after the same hash
    assert fab_hash_of_dir(app) == want  # reproducible: same source, same hash
    (app / "probe.py").write_text("server = client = 1\n")
    assert fab_hash_of_dir(app) != want  # any change to the code is a new app


def test_approve_app_accepts_a_hash_a_directory_or_a_fab_file(app: Path, tmp_path: Path) -> None:
    fab = _flwr_build(app, tmp_path / "built")
    digest = hashlib.sha256(fab.read_bytes()).hexdigest()
    assert resolve_approved([digest.upper()]) == [digest]
    assert resolve_approved([str(app), str(fab), digest]) == [digest]
    with pytest.raises(ConfigError, match=r"--approve-app 'abc': expected a 64-hex-digit"):
        resolve_approved(["abc"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a Flower app directory"):
        resolve_approved([str(tmp_path / "empty")])


def test_only_approved_fabs_reach_flowers_installer(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr.supernode.runtime.run_clientapp as runner

    fab = _flwr_build(app, tmp_path / "built").read_bytes()
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    original = runner.install_from_fab
    monkeypatch.setattr(runner, "install_from_fab", original)  # restored after the test
    guard_fab_install(frozenset({"0" * 64}))
    with pytest.raises(AppNotApprovedError, match=hashlib.sha256(fab).hexdigest()):
        runner.install_from_fab(fab, skip_prompt=True)
    assert not home.exists() or not any(home.rglob("probe.py")), "an unapproved app was written"

    monkeypatch.setattr(runner, "install_from_fab", original)
    guard_fab_install(frozenset({hashlib.sha256(fab).hexdigest()}))
    runner.install_from_fab(fab, skip_prompt=True)
    assert any(home.rglob("probe.py")), "the approved app was not installed"


def test_check_fab_and_the_environment_hand_down() -> None:
    fab = b"not really a zip"
    digest = hashlib.sha256(fab).hexdigest()
    assert check_fab(fab, frozenset({digest})) == digest
    with pytest.raises(AppNotApprovedError, match="--approve-app"):
        check_fab(fab + b"!", frozenset({digest}))
    assert approved_from_env({}) is None  # no pin: any app (the default)
    assert approved_from_env({"FEDCRM_APPROVED_FABS": f"{digest},"}) == {digest}


# ---------------------------------------------------------------- node start
def test_node_start_pins_the_approved_apps_in_the_warm_superexec(
    fed: Path, data_dir: Path, app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_start(fed, data_dir, "--no-connect-check", "--approve-app", str(app)) == 0
    captured = capsys.readouterr()
    warm = shlex.split(captured.out.strip().splitlines()[-2])
    assert warm[warm.index("--approved-fabs") + 1] == fab_hash_of_dir(app)
    assert "any app the SuperLink" not in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--approve-app", "not-a-hash"], r"--approve-app 'not-a-hash': expected a 64-hex"),
        (["--approve-app", "0" * 64, "--executor", "subprocess"], r"needs --executor warm"),
    ],
)
def test_node_start_refuses_a_bad_approve_app(
    fed: Path, data_dir: Path, extra: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        node_start(fed, data_dir, "--no-connect-check", *extra)
