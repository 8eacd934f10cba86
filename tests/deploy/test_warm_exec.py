"""The warm SuperExec: what it preloads, how it forks, what it refuses.

Its end-to-end behaviour (real SuperNodes running fedcrm's ClientApp in
forked children) is covered by ``tests/integration``, where every node runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedcrm.deploy import warm_exec


def test_preload_keeps_dependencies_and_forgets_the_app(tmp_path: Path) -> None:
    """The app's own package must be imported afresh (from the FAB) in each child."""
    pkg = tmp_path / "warmprobe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text("import fractions\nimport wave\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from fedcrm.deploy.warm_exec import preload
        kept = preload(["warmprobe.app"], keep_prefix="warmprobe")
        assert "wave" in kept and "fractions" in sys.modules, "dependencies dropped"
        assert not any(m.startswith("warmprobe") for m in sys.modules), "app kept"
        print("ok")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.stdout.strip() == "ok", res.stderr


def test_preload_list_covers_the_lazy_imports_of_the_client_app() -> None:
    """Every module the ClientApp imports lazily at message time is preloaded."""
    src = Path(warm_exec.__file__).parents[1] / "client" / "app.py"
    lazy = {
        line.split()[1]
        for line in src.read_text().splitlines()
        if line.startswith("    ") and line.strip().startswith("from fedcrm.")
    }
    preloaded = set(warm_exec.PRELOAD)
    # Modules reached through a preloaded one count too.
    assert lazy <= preloaded | {"fedcrm.privacy.ledger"}, lazy - preloaded


def test_fork_executor_reaps_children_and_counts_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import TaskType

    def child(spec: object) -> None:
        os._exit(0)

    monkeypatch.setattr(warm_exec, "_run_child", child)
    ex = warm_exec.ForkExecutor()
    spec = SimpleNamespace(task_type=TaskType.CLIENT_APP, task_id=1)
    for _ in range(3):
        assert str(ex.launch(spec).status) == "accepted"
    assert ex.launched == 3
    deadline = time.monotonic() + 10
    while ex.children and time.monotonic() < deadline:
        ex.reconcile()
        time.sleep(0.05)
    assert not ex.children, "finished children were not reaped"
    assert ex.last_exit > 0


def test_a_zombie_supernode_counts_as_gone() -> None:
    """An exited SuperNode nobody has reaped yet must not keep its SuperExec alive."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.05)
    try:
        assert not warm_exec._pid_alive(child.pid)
    finally:
        child.wait()
    assert warm_exec._pid_alive(os.getpid())


def test_exits_when_the_supernode_dies_while_its_runtime_api_is_unreachable() -> None:
    """Flower's retries would wait for ever; the SuperExec gives up and checks its parent."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    t0 = time.monotonic()
    ex = warm_exec.serve("127.0.0.1:9", insecure=True, parent_pid=parent.pid, preload_modules=[])
    parent.wait()
    assert ex.launched == 0 and time.monotonic() - t0 < 60


def test_polls_fast_only_after_a_task_ended() -> None:
    fast = 0.05
    assert warm_exec.poll_delay(fast, last_exit=100.0, now=100.5) == fast
    assert warm_exec.poll_delay(fast, last_exit=100.0, now=100.0 + warm_exec.BURST_S + 1) == (
        warm_exec.IDLE_POLL_S
    )
    assert warm_exec.poll_delay(2.0, last_exit=0.0, now=1e6) == 2.0  # a slower setting wins


def test_children_cache_bytecode_outside_the_source_tree(tmp_path: Path) -> None:
    """With PYTHONDONTWRITEBYTECODE set, a child still leaves bytecode for the next one."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "warmmod.py").write_text("X = 1\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(src)!r})
        from fedcrm.deploy.warm_exec import _cache_bytecode
        _cache_bytecode()
        import warmmod
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", warm_exec.PYCACHE_ENV: str(cache)}
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr
    assert list(cache.rglob("warmmod*.pyc")), "no bytecode cached"
    assert not list(src.rglob("*.pyc")), "bytecode written into the source tree"


@pytest.mark.parametrize("value", ["abc", "0.001", "100"])
def test_poll_interval_is_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(warm_exec.POLL_INTERVAL_ENV, value)
    with pytest.raises(SystemExit, match=warm_exec.POLL_INTERVAL_ENV):
        warm_exec.poll_interval()


def test_poll_interval_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(warm_exec.POLL_INTERVAL_ENV, raising=False)
    assert warm_exec.poll_interval() == warm_exec.DEFAULT_POLL_INTERVAL


def test_exits_when_the_supernode_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """With its SuperNode dead, the SuperExec stops instead of polling forever."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    t0 = time.monotonic()
    ex = warm_exec.serve(
        "127.0.0.1:9",  # nothing listens: the loop must stop before needing it
        insecure=True,
        parent_pid=gone.pid,
        preload_modules=[],
    )
    assert ex.launched == 0 and time.monotonic() - t0 < 30
