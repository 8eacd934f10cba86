"""Which branches the SuperLink admits: ``server/admitted.json`` and its registration.

Flower admits a SuperNode (``--enable-supernode-auth``) once its public key is
registered through the SuperLink's Control API (``flwr supernode register``).
The SuperLink keeps registrations in its state, which fedcrm keeps in memory
(the README, Latency, says why), so a restarted SuperLink has forgotten them.
The federation directory therefore holds the list: ``fedcrm server register``
adds a branch to ``server/admitted.json`` (and registers it at once when the
SuperLink is up), ``fedcrm server start`` registers every listed branch each
time the SuperLink starts, and ``fedcrm server unregister`` takes one off.

The file is JSON: ``{"format": 1, "branches": {"<branch_id>": {"public_key":
"<OpenSSH public key>", "admitted": "<UTC time>"}}}``; a compliance officer can
read who may join. Only public keys are in it.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcrm.deploy.provision import Federation, check_branch_id
from fedcrm.errors import ConfigError, KeyFileError

ADMITTED_FILE = "server/admitted.json"
FORMAT = 1


@dataclass(frozen=True)
class Registration:
    """What the SuperLink answered for one branch."""

    branch_id: str
    node_id: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Registered now, or registered already."""
        return self.error is None


def admitted_path(fed: Federation) -> Path:
    """``<federation>/server/admitted.json``."""
    return fed.root / ADMITTED_FILE


def _entries(fed: Federation) -> dict[str, dict[str, str]]:
    """The validated ``branches`` of the admission list (empty when there is none yet).

    Raises
    ------
    ConfigError
        When the file exists but is not a fedcrm admission list; it is left as it is.
    """
    path = admitted_path(fed)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        branches = data["branches"]
        if data.get("format") != FORMAT or not isinstance(branches, dict):
            raise ValueError("not format 1")
        for entry in branches.values():
            str(entry["public_key"])
        return dict(branches)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a fedcrm admission list ({type(exc).__name__}); it was left "
            "untouched: restore it from a backup, or move it away and register the branches "
            "again with `fedcrm server register`"
        ) from None


def load_admitted(fed: Federation) -> dict[str, str]:
    """Branch id -> OpenSSH public key of every admitted branch (empty when none yet).

    Raises
    ------
    ConfigError
        When the file exists but is not a fedcrm admission list; it is left as it is.
    """
    return {str(b): str(entry["public_key"]) for b, entry in _entries(fed).items()}


def _save(fed: Federation, branches: dict[str, dict[str, str]]) -> Path:
    path = admitted_path(fed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "branches": branches}, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def key_bytes(openssh: str, source: str) -> bytes:
    """The public key as Flower stores it, from its OpenSSH text; ``source`` names it in errors.

    Raises
    ------
    KeyFileError
        When it is not an EC public key on a NIST curve (what Flower accepts).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    try:
        key = serialization.load_ssh_public_key(openssh.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"{source} is not an OpenSSH public key; use the node key from "
            "`fedcrm federation init` / `fedcrm node init` (public/nodes/<branch>.pub)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise KeyFileError(
            f"{source} is not an EC public key on a NIST curve (Flower's node "
            "authentication needs one, e.g. P-384)"
        )
    return bytes(public_key_to_bytes(key))


def admit(fed: Federation, branch_id: str, public_key: Path | None = None) -> str:
    """Add ``branch_id`` to the admission list; returns its OpenSSH public key.

    The key is ``public_key`` or the federation's ``public/nodes/<branch_id>.pub``.
    Admitting a branch again replaces its key (a branch that made a new node key).

    Raises
    ------
    ConfigError, KeyFileError
        Naming ``--branch-id`` / ``--public-key`` when the key is missing or not one
        Flower accepts.
    """
    branch_id = check_branch_id(branch_id)
    if public_key is None:
        public_key = fed.root / str(fed.data["public"]["nodes"]) / f"{branch_id}.pub"
        if not public_key.is_file():
            raise ConfigError(
                f"--branch-id {branch_id}: no node key at {public_key}; onboard the branch "
                "with `fedcrm node init --federation DIR --branch-id ...`, or give its key "
                "with --public-key"
            )
        source = str(public_key)
    else:
        if not public_key.is_file():
            raise KeyFileError(f"--public-key {public_key}: no such file")
        source = f"--public-key {public_key}"
    text = public_key.read_text(errors="replace").strip()
    key_bytes(text, source)
    entries = _entries(fed)
    entries[branch_id] = {
        "public_key": text,
        "admitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _save(fed, entries)
    return text


def revoke(fed: Federation, branch_id: str) -> str:
    """Take ``branch_id`` off the admission list; returns the key it had.

    Raises
    ------
    ConfigError
        When the branch is not on the list.
    """
    entries = _entries(fed)
    if branch_id not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise ConfigError(f"--branch-id {branch_id} is not admitted (admitted: {known})")
    key = str(entries.pop(branch_id)["public_key"])
    _save(fed, entries)
    return key


# -------------------------------------------------------------- Control API
def control_client(fed: Federation, address: str | None = None) -> Any:
    """A client of the SuperLink's Control API over TLS with the federation's CA.

    The same requests ``flwr supernode register|unregister|ls`` send (Flower's
    own HTTP client, without account login, which fedcrm does not use).
    """
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    srv = fed.data["server"]
    ca = fed.path(srv.get("ca_cert")) or fed.path(fed.data["ca"]["cert"])
    if ca is None or not ca.is_file():
        raise KeyFileError(f"{ca}: the federation's CA certificate is missing")
    return ControlHttpClient.from_server_address(
        server_address=address or fed.server_address,
        insecure=False,
        root_certificates=ca.read_bytes(),
        interceptors=[
            CliClientHttpInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
        ],
    )


def _flower_error(exc: Exception) -> str:
    import httpx
    from flwr.supercore.error import FlowerError  # type: ignore[attr-defined]

    if isinstance(exc, httpx.HTTPStatusError):
        err = FlowerError.from_json(exc.response.text)
        if err is not None:
            return f"[code: {err.code}] {err.message}"
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


def _already_registered(message: str) -> bool:
    return "already in use" in message.lower()


@contextmanager
def _connected(fed: Federation) -> Iterator[Any]:
    client = control_client(fed)
    try:
        yield client
    finally:
        client.close()


def register_with_superlink(fed: Federation, branches: dict[str, str]) -> list[Registration]:
    """Register each branch's key on the running SuperLink (already registered is fine)."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    out = []
    with _connected(fed) as client:
        for branch_id, openssh in sorted(branches.items()):
            try:
                res = client.RegisterNode(
                    RegisterNodeRequest(
                        public_key=key_bytes(openssh, f"{ADMITTED_FILE}: {branch_id}"),
                        name=branch_id,
                    )
                )
                out.append(Registration(branch_id, int(res.node_id)))
            except Exception as exc:  # noqa: BLE001 - reported per branch
                why = _flower_error(exc)
                if _already_registered(why):
                    out.append(Registration(branch_id, None))
                else:
                    out.append(Registration(branch_id, None, why))
    return out


def unregister_from_superlink(fed: Federation, openssh: str) -> int:
    """Unregister the SuperNode with this key from the running SuperLink; its node id (0: none)."""
    from flwr.proto.control_pb2 import ListNodesRequest, UnregisterNodeRequest

    wanted = key_bytes(openssh, ADMITTED_FILE)
    with _connected(fed) as client:
        for info in client.ListNodes(ListNodesRequest()).nodes_info:
            if bytes(info.public_key) == wanted:
                client.UnregisterNode(UnregisterNodeRequest(node_id=info.node_id))
                return int(info.node_id)
    return 0


def superlink_answers(fed: Federation) -> str | None:
    """``None`` when the SuperLink's Control API answers, else why not."""
    from flwr.proto.control_pb2 import ListNodesRequest

    try:
        with _connected(fed) as client:
            client.ListNodes(ListNodesRequest())
        return None
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        return _flower_error(exc)


def register_when_up(
    fed: Federation,
    *,
    alive: Callable[[], bool],
    timeout: float = 120.0,
    say: Callable[[str], None] | None = None,
) -> list[Registration]:
    """Wait for a starting SuperLink to answer, then register every admitted branch.

    ``alive`` tells whether the SuperLink process still runs (the wait ends if not).
    """
    say = say or (lambda text: print(f"fedcrm: {text}", file=sys.stderr, flush=True))
    branches = load_admitted(fed)
    if not branches:
        say(
            "no branch is admitted yet: register each with "
            f"`fedcrm server register --federation {fed.root} --branch-id <branch>`"
        )
        return []
    deadline = time.monotonic() + timeout
    why: str | None = "not tried"
    while alive() and time.monotonic() < deadline:
        why = superlink_answers(fed)
        if why is None:
            break
        time.sleep(0.5)
    if why is not None:
        if alive():
            say(
                f"the SuperLink did not answer at {fed.server_address} within {timeout:.0f} s "
                f"({why}); register the branches with `fedcrm server register` once it does"
            )
        return []
    results = register_with_superlink(fed, branches)
    done = [r.branch_id for r in results if r.ok]
    if done:
        say(f"registered the admitted branches with the SuperLink: {', '.join(done)}")
    for r in results:
        if not r.ok:
            say(f"branch {r.branch_id} could not be registered: {r.error}")
    return results
