"""The admitted branches on a running SuperLink: registration, node ids, who is online.

Flower admits a SuperNode (``--enable-supernode-auth``) once its public key is
registered through the SuperLink's Control API (``flwr supernode register``)
and gives it a node id. The SuperLink keeps registrations in its state, which
fedcrm keeps in memory (the README, Latency, says why), so a restarted
SuperLink has forgotten them: ``fedcrm server start`` registers every admitted
branch each time the SuperLink starts (:func:`register_when_up`), and every
registration stores the node id in the roster, where the ServerApp checks that
the node announcing a branch is the node registered for it
(:func:`fedcrm.identity.check_node_identity`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fedcrm.deploy import admission
from fedcrm.deploy.provision import Federation
from fedcrm.errors import KeyFileError

UNREGISTERED_KEY = (
    "the running SuperLink unregistered this node key before and refuses it until it "
    "restarts; the branch makes a new one (`fedcrm node rotate-keys --node`)"
)


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
        raise KeyFileError(f"{source} is not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise KeyFileError(
            f"{source} is not an EC public key on a NIST curve (Flower's node "
            "authentication needs one, e.g. P-384)"
        )
    return bytes(public_key_to_bytes(key))


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


@contextmanager
def _connected(fed: Federation) -> Iterator[Any]:
    client = control_client(fed)
    try:
        yield client
    finally:
        client.close()


def _nodes(client: Any) -> list[Any]:
    from flwr.proto.control_pb2 import ListNodesRequest

    return list(client.ListNodes(ListNodesRequest()).nodes_info)


def register_with_superlink(fed: Federation, branches: dict[str, str]) -> list[Registration]:
    """Register each branch's node key (OpenSSH) on the running SuperLink; record node ids.

    A key the SuperLink holds already is fine: its node id is looked up. Each
    node id is written to the roster as soon as it is known.
    """
    from flwr.proto.control_pb2 import RegisterNodeRequest

    out = []
    with _connected(fed) as client:
        for branch_id, openssh in sorted(branches.items()):
            wanted = key_bytes(openssh, f"{admission.ADMITTED_FILE}: {branch_id}")
            try:
                res = client.RegisterNode(RegisterNodeRequest(public_key=wanted, name=branch_id))
                node_id: int | None = int(res.node_id)
            except Exception as exc:  # noqa: BLE001 - reported per branch
                why = _flower_error(exc)
                if "already in use" not in why.lower():
                    out.append(Registration(branch_id, None, why))
                    continue
                node_id = next(
                    (
                        int(n.node_id)
                        for n in _nodes(client)
                        if bytes(n.public_key) == wanted and n.status != "unregistered"
                    ),
                    None,
                )
                if node_id is None:
                    # Flower never takes an unregistered key back while it runs.
                    out.append(Registration(branch_id, None, UNREGISTERED_KEY))
                    continue
            admission.record_node_ids(fed, {branch_id: node_id})
            out.append(Registration(branch_id, node_id))
    return out


def unregister_from_superlink(fed: Federation, openssh: str) -> int:
    """Unregister the SuperNode with this key from the running SuperLink; its node id (0: none)."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    wanted = key_bytes(openssh, admission.ADMITTED_FILE)
    with _connected(fed) as client:
        for info in _nodes(client):
            if bytes(info.public_key) == wanted and info.status != "unregistered":
                client.UnregisterNode(UnregisterNodeRequest(node_id=info.node_id))
                return int(info.node_id)
    return 0


def superlink_answers(fed: Federation) -> str | None:
    """``None`` when the SuperLink's Control API answers, else why not."""
    try:
        with _connected(fed) as client:
            _nodes(client)
        return None
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        return _flower_error(exc)


def node_table(fed: Federation) -> tuple[list[dict[str, Any]], str | None]:
    """One row per branch of the roster (and per SuperNode the roster does not know).

    Each row: ``branch``, ``admission`` (``admitted``, ``removed``, ``key revoked``),
    ``node_id``, ``status`` (the SuperLink's: ``online``, ``offline``,
    ``registered``, ``unregistered``; ``None`` when it does not answer or does not
    hold the key), ``signing_key_id``. Returns the rows and why the SuperLink did
    not answer (``None`` when it did).
    """
    roster = admission.load(fed)
    try:
        with _connected(fed) as client:
            infos: list[Any] | None = _nodes(client)
        down = None
    except Exception as exc:  # noqa: BLE001 - the table is still useful offline
        infos, down = None, _flower_error(exc)
    by_key = {bytes(i.public_key): i for i in infos or [] if i.status != "unregistered"}
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for b, identity in sorted(roster.branches.items()):
        info = None
        if identity.node_public_key and identity.status == "active":
            info = by_key.get(key_bytes(identity.node_public_key, f"branch {b}"))
        if info is not None:
            seen.add(int(info.node_id))
        admitted = (
            "admitted"
            if identity.admitted
            else ("removed" if identity.status == "removed" else "key revoked")
        )
        key = identity.signing_key
        rows.append(
            {
                "branch": b,
                "admission": admitted,
                "node_id": int(info.node_id) if info is not None else identity.node_id,
                "status": str(info.status) if info is not None else None,
                "signing_key_id": key.key_id if key is not None else None,
            }
        )
    for info in infos or []:
        if int(info.node_id) not in seen and info.status != "unregistered":
            rows.append(
                {
                    "branch": None,
                    "admission": "not in the admitted list",
                    "node_id": int(info.node_id),
                    "status": str(info.status),
                    "signing_key_id": None,
                }
            )
    return rows, down


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
    branches = {b: str(i.node_public_key) for b, i in admission.load(fed).admitted().items()}
    if not branches:
        say(
            "no branch is admitted yet: register each with "
            f"`fedcrm server register --federation {fed.root} --request <branch>.request.json`"
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
