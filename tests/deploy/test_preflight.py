"""``fedcrm server start`` / ``fedcrm node start`` refuse bad settings, naming the one to fix.

Wrong CA, expired or mismatched certificate, a key not matching its
certificate or readable by others, a missing key file, a wrong data path, an
export breaking the data contract, malformed node-config values, a busy port,
a branch with keys but no pinned app. ``--check-only`` prints the Flower
command instead of running it.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fedcrm.deploy.provision import init_federation
from fedcrm.deploy.tls import make_ca, make_server_cert, pem_key, write_cert, write_private
from fedcrm.errors import ConfigError

from .conftest import SOME_APP, branch_dir, free_port, node_start, run_cli


def _server(fed: Path, *extra: str) -> int:
    return run_cli(["server", "start", "--federation", str(fed), "--check-only", *extra])


def _reissue(fed: Path, sans: list[str], **kw: object) -> None:
    ca_key = serialization.load_pem_private_key((fed / "ca" / "ca.key").read_bytes(), None)
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((fed / "ca" / "ca.crt").read_bytes())
    key, cert = make_server_cert(ca_key, ca, sans, **kw)  # type: ignore[arg-type]
    write_cert(fed / "server" / "server.pem", cert)
    write_private(fed / "server" / "server.key", pem_key(key))


# ------------------------------------------------------------------ server
def test_server_start_builds_the_tls_and_node_auth_command(
    fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _server(fed, "--", "--log-file", "x.log") == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[0] == "flower-superlink"
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert flag in cmd
    assert "--database" not in cmd  # Flower's in-memory state; registrations from admitted.json
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert cmd[-2:] == ["--log-file", "x.log"]


def test_server_start_can_keep_state_in_sqlite(
    fed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _server(fed, "--database", str(tmp_path / "state.db")) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[cmd.index("--database") + 1] == str(tmp_path / "state.db")


def test_expired_server_certificate(fed: Path) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    _reissue(fed, ["127.0.0.1"], days=2, not_before=past)
    with pytest.raises(ConfigError, match=r"--ssl-certfile: .*expired"):
        _server(fed)


def test_certificate_not_covering_the_address(fed: Path) -> None:
    _reissue(fed, ["10.9.9.9", "other.example.com"])
    with pytest.raises(ConfigError, match=r"--ssl-certfile: .*10.9.9.9 but SuperNodes connect to"):
        _server(fed)


def test_fedcrm_federation_cert_reissues_a_fixed_certificate(fed: Path) -> None:
    _reissue(fed, ["10.9.9.9"])
    assert run_cli(["federation", "cert", "--federation", str(fed)]) == 0
    assert _server(fed) == 0


def test_wrong_ca(fed: Path) -> None:
    _, other = make_ca("another CA")
    write_cert(fed / "server" / "ca.crt", other)
    with pytest.raises(ConfigError, match=r"--ssl-ca-certfile: .*did not sign"):
        _server(fed)


def test_key_not_matching_the_certificate(fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_federation(other, "127.0.0.1:1")
    shutil.copyfile(other / "server" / "server.key", fed / "server" / "server.key")
    with pytest.raises(ConfigError, match=r"--ssl-keyfile: .*is not the key of"):
        _server(fed)


def test_key_readable_by_others(fed: Path) -> None:
    os.chmod(fed / "server" / "server.key", 0o644)
    with pytest.raises(ConfigError, match=r"--ssl-keyfile: .*chmod 600"):
        _server(fed)


def test_missing_federation_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--federation"):
        _server(tmp_path / "nothing")


def test_port_in_use(fed: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=r"--port: .*in use"):
            _server(fed, "--port", str(port))


# -------------------------------------------------------------------- node
def test_node_start_builds_the_supernode_command(
    fed: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_start(fed, data_dir, "--epsilon-ceiling", "8", "--no-connect-check") == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[0] == "flower-supernode" and "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(fed / "kit" / "ca.crt")
    key = branch_dir(fed) / "keys" / "node_auth_key"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    from flwr.common.config import parse_config_args

    node_config = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node_config["branch-id"] == "b1" and node_config["epsilon-ceiling"] == 8.0
    assert Path(node_config["data-path"]) == data_dir.resolve()
    b1 = branch_dir(fed)
    assert node_config["ledger-path"] == str(b1 / "ledger.jsonl")
    assert node_config["signing-key"] == str(b1 / "keys" / "b1.key")
    assert node_config["model-dir"] == str(b1 / "models")
    assert node_config["cache-dir"] == str(b1 / "cache")
    assert node_config["agreement-key"] == str(b1 / "keys" / "b1.x25519.key")
    assert "roster" not in node_config  # only with --roster


def test_node_start_runs_the_warm_superexec_by_default(
    fed: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_start(fed, data_dir, "--no-connect-check") == 0
    exec_line, node_line = capsys.readouterr().out.strip().splitlines()[-2:]
    node = shlex.split(node_line)
    assert node[node.index("--isolation") + 1] == "process"
    warm = shlex.split(exec_line)
    assert warm[1:3] == ["-m", "fedcrm.deploy.warm_exec"]
    port = node[node.index("--port") + 1]
    assert warm[warm.index("--runtime-api-address") + 1] == f"127.0.0.1:{port}"
    # The supervisor's pid: the SuperExec outlives SuperNode restarts, not `node start`.
    assert int(warm[warm.index("--parent-pid") + 1]) == os.getpid()
    assert warm[warm.index("--approved-fabs") + 1] == SOME_APP


def test_a_branch_with_keys_runs_only_a_pinned_app(fed: Path, data_dir: Path) -> None:
    """It holds a signing key (every branch does); without --approve-app it does not start."""
    with pytest.raises(ConfigError, match=r"--approve-app: this branch holds a ledger signing"):
        node_start(fed, data_dir, "--no-connect-check", approve=False)
    with pytest.raises(ConfigError, match=r"holds an epsilon ceiling and a ledger") as e:
        node_start(fed, data_dir, "--no-connect-check", "--epsilon-ceiling", "8", approve=False)
    assert "fedcrm node app-hash APP_DIR" in str(e.value)


def test_flowers_own_executor_cannot_pin_an_app(fed: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"--approve-app: needs --executor warm"):
        node_start(fed, data_dir, "--no-connect-check", "--executor", "subprocess")


def test_the_branch_folder_defaults_to_the_kits_parent(
    fed: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = branch_dir(fed) / "kit"
    shutil.copytree(fed / "kit", kit)  # the branch unpacked the kit into its folder
    argv = ["node", "start", "--federation", str(kit), "--data-path", str(data_dir),
            "--runtime-port", str(free_port()), "--check-only", "--no-connect-check",
            "--approve-app", SOME_APP]  # fmt: skip
    assert run_cli(argv) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[cmd.index("--root-certificates") + 1] == str(kit / "ca.crt")
    key = branch_dir(fed) / "keys" / "node_auth_key"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)


def test_missing_kit_or_branch_folder_names_the_flag(fed: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"--federation .*no kit.json"):
        run_cli(["node", "start", "--federation", str(fed / "server"), "--data-path",
                 str(data_dir), "--check-only"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"--branch-dir .*fedcrm node init"):
        run_cli(["node", "start", "--federation", str(fed / "kit"), "--branch-dir",
                 str(fed), "--data-path", str(data_dir), "--check-only"])  # fmt: skip


def test_missing_node_auth_key(fed: Path, data_dir: Path) -> None:
    (branch_dir(fed) / "keys" / "node_auth_key").unlink()
    with pytest.raises(ConfigError, match=r"--auth-key: .*does not exist"):
        node_start(fed, data_dir, "--no-connect-check")


def test_node_auth_key_in_the_wrong_format(fed: Path, data_dir: Path) -> None:
    shutil.copyfile(fed / "server" / "server.key", branch_dir(fed) / "keys" / "node_auth_key")
    with pytest.raises(ConfigError, match=r"--auth-key: .*OpenSSH"):
        node_start(fed, data_dir, "--no-connect-check")


def test_wrong_data_path(fed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--data-path: .*does not exist"):
        node_start(fed, tmp_path / "missing", "--no-connect-check")


def test_export_breaking_the_data_contract(fed: Path, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    lines = (bad / "events.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[2] = "teleport"  # event_type outside the contract's vocabulary
    lines[3] = ",".join(fields)
    (bad / "events.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"--data-path: .*data contract") as exc:
        node_start(fed, bad, "--no-connect-check")
    assert "teleport" not in str(exc.value)  # problems never quote field values


@pytest.mark.parametrize(
    ("flag", "value"), [("--epsilon-ceiling", "abc"), ("--epsilon-ceiling", "-1"), ("--delta", "2")]
)
def test_malformed_node_config_values(fed: Path, data_dir: Path, flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{flag}: "):
        node_start(fed, data_dir, flag, value, "--no-connect-check")


def test_a_branch_id_other_than_the_folders(fed: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"--branch-id zz is not the branch of .* \(b1\)"):
        node_start(fed, data_dir, "--branch-id", "zz")


def test_an_export_naming_another_branch_is_noted_with_both_ids(
    fed: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcrm.data.synthetic import write_synthetic

    # data_dir is the generator's one-branch export: its rows say branch_00.
    assert node_start(fed, data_dir, "--no-connect-check") == 0
    err = capsys.readouterr().err
    assert "note: --data-path: every row of the export says branch_id branch_00" in err
    assert "this node serves branch b1" in err
    own = write_synthetic(tmp_path / "b1", branches=1, customers=40, seed=3, branch_ids=["b1"])
    assert node_start(fed, own, "--no-connect-check") == 0
    assert "every row of the export says" not in capsys.readouterr().err


def test_runtime_port_in_use(fed: Path, data_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=r"--runtime-port: .*in use"):
            node_start(fed, data_dir, "--runtime-port", str(port), "--no-connect-check")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """A TLS listener with the certificate of *another* federation."""
    other = tmp_path / "other"
    port = free_port()
    init_federation(other, f"127.0.0.1:{port}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(other / "server" / "server.pem", other / "server" / "server.key")
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{port}"
    stop.set()
    t.join(timeout=2)
    sock.close()


def test_wrong_ca_at_the_branch_is_caught_by_a_tls_handshake(
    fed: Path, data_dir: Path, tls_server: str
) -> None:
    with pytest.raises(ConfigError, match=r"--root-certificates: .*does not verify"):
        node_start(fed, data_dir, "--superlink", tls_server)


def test_unreachable_superlink_is_only_a_note(
    fed: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_start(fed, data_dir, "--superlink", f"127.0.0.1:{free_port()}") == 0
    assert "not reachable" in capsys.readouterr().err
