"""Provisioning of a federation directory: CA, TLS certificate, the kit for branches.

``fedcrm federation init --out DIR --server-address HOST:PORT`` writes (paths
relative to ``DIR``; private keys mode 0600, their folders 0700)::

    federation.json         the layout below and the server address
    ca/ca.crt  ca/ca.key    the federation's certificate authority (keep ca.key offline)
    server/                 the central team's (the SuperLink host)
        ca.crt server.pem server.key  TLS certificate (SANs cover HOST) and key
        admitted.json                 the roster: each admitted branch's public keys
                                      (``fedcrm server register --request``)
    kit/                    hand to every branch (nothing secret in it)
        ca.crt                        verifies the SuperLink (``--root-certificates``)
        kit.json                      the SuperLink address

No branch key is made here: each branch makes its own with ``fedcrm node init``
on its own machine (:mod:`fedcrm.deploy.branch_dir`) and sends only the public
halves, in a signed request file, to the central team. The homomorphic-
encryption secret is not made here either; the server only ever holds a public
context.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedcrm.deploy.tls import (
    CERT_DAYS,
    make_ca,
    make_server_cert,
    parse_address,
    pem_key,
    private_dir,
    server_sans,
    write_cert,
    write_private,
)
from fedcrm.errors import ConfigError

FORMAT = 2
FEDERATION_FILE = "federation.json"
KIT_FILE = "kit.json"
KIT_KIND = "fedcrm-branch-kit"


# ----------------------------------------------------------------- layout
@dataclass(frozen=True)
class Federation:
    """A loaded ``federation.json`` (paths resolved against its directory)."""

    root: Path
    data: dict[str, Any]

    def path(self, rel: str | None) -> Path | None:
        """A path from ``federation.json`` resolved against the federation directory."""
        if not rel:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    @property
    def server_address(self) -> str:
        """``HOST:PORT`` SuperNodes connect to."""
        return str(self.data["server_address"])

    @property
    def server_dir(self) -> Path:
        """The central team's folder (certificate, key, ``admitted.json``)."""
        return self.root / "server"

    @property
    def kit_dir(self) -> Path:
        """The folder handed to every branch."""
        return self.root / str(self.data.get("kit", "kit"))

    def save(self) -> Path:
        """Rewrite ``federation.json``."""
        path = self.root / FEDERATION_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def load_federation(directory: str | os.PathLike[str]) -> Federation:
    """Read ``DIR/federation.json``.

    Raises
    ------
    ConfigError
        Naming ``--federation`` when the directory or file is missing or invalid.
    """
    root = Path(directory).resolve()
    path = root / FEDERATION_FILE
    if not path.is_file():
        raise ConfigError(
            f"--federation {directory}: no {FEDERATION_FILE} there; create the directory with "
            "`fedcrm federation init --out DIR --server-address HOST:PORT`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--federation {directory}: {FEDERATION_FILE} is unreadable: {exc}"
        ) from None
    if not isinstance(data, dict) or "server_address" not in data:
        raise ConfigError(
            f"--federation {directory}: {FEDERATION_FILE} is not a fedcrm federation file"
        )
    if data.get("format") != FORMAT:
        raise ConfigError(
            f"--federation {directory}: {FEDERATION_FILE} is format {data.get('format')}; this "
            f"fedcrm reads format {FORMAT} (branches make their own keys). Create a new "
            "federation with `fedcrm federation init` and have each branch run `fedcrm node init`"
        )
    return Federation(root, data)


@dataclass(frozen=True)
class Kit:
    """What a branch gets from the central team: the SuperLink address and the CA certificate."""

    root: Path
    server_address: str
    ca_cert: Path


def write_kit(fed: Federation) -> Path:
    """(Re)write ``kit/``: ``ca.crt`` and ``kit.json`` with the server address."""
    kit = fed.kit_dir
    kit.mkdir(parents=True, exist_ok=True)
    ca = fed.path(fed.data["ca"]["cert"])
    assert ca is not None
    shutil.copyfile(ca, kit / "ca.crt")
    data = {
        "format": 1,
        "kind": KIT_KIND,
        "server_address": fed.server_address,
        "ca_cert": "ca.crt",
    }
    (kit / KIT_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return kit


def load_kit(directory: str | os.PathLike[str]) -> Kit:
    """The kit in ``directory`` (or, for a whole federation directory, its ``kit/``).

    Raises
    ------
    ConfigError
        Naming ``--federation`` when neither is there.
    """
    root = Path(directory).resolve()
    if not (root / KIT_FILE).is_file() and (root / FEDERATION_FILE).is_file():
        root = load_federation(root).kit_dir
    path = root / KIT_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("kind") != KIT_KIND:
            raise ValueError("not a kit")
        address, ca = str(data["server_address"]), root / str(data["ca_cert"])
    except FileNotFoundError:
        raise ConfigError(
            f"--federation {directory}: no {KIT_FILE} there; give the kit folder the central "
            "team handed you (their federation directory's kit/)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"--federation {directory}: {KIT_FILE} is not a fedcrm branch kit "
            f"({type(exc).__name__}); ask the central team for the kit again"
        ) from None
    return Kit(root, address, ca)


def init_federation(
    out_dir: str | os.PathLike[str],
    server_address: str,
    *,
    extra_sans: Sequence[str] = (),
    cert_days: int = CERT_DAYS,
    overwrite: bool = False,
) -> Federation:
    """Create a federation directory (see the module docstring for its layout).

    Raises
    ------
    ConfigError
        On a malformed address, or an existing federation without ``overwrite``.
    """
    host, port = parse_address(server_address)
    root = Path(out_dir).resolve()
    if (root / FEDERATION_FILE).exists():
        if not overwrite:
            raise ConfigError(
                f"--out {out_dir}: a federation already exists there; pass --overwrite to start "
                "afresh (every branch then registers again)"
            )
        for sub in ("ca", "server", "kit"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca()
    private_dir(root / "ca")
    write_private(root / "ca" / "ca.key", pem_key(ca_key))
    write_cert(root / "ca" / "ca.crt", ca_cert)

    sans = server_sans(host, extra_sans)
    srv_key, srv_cert = make_server_cert(ca_key, ca_cert, sans, days=cert_days)
    sdir = private_dir(root / "server")
    shutil.copyfile(root / "ca" / "ca.crt", sdir / "ca.crt")
    write_cert(sdir / "server.pem", srv_cert)
    write_private(sdir / "server.key", pem_key(srv_key))

    data: dict[str, Any] = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "server_address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "ca": {"cert": "ca/ca.crt", "key": "ca/ca.key"},
        "server": {
            "ca_cert": "server/ca.crt",
            "cert": "server/server.pem",
            "key": "server/server.key",
            "sans": sans,
        },
        "kit": "kit",
    }
    fed = Federation(root, data)
    write_kit(fed)
    fed.save()
    return fed


def reissue_server_cert(
    fed: Federation,
    *,
    server_address: str | None = None,
    extra_sans: Sequence[str] = (),
    days: int = CERT_DAYS,
) -> list[str]:
    """Issue a new server certificate with the federation's CA (expired, or a new address).

    Returns the certificate's SANs. A new address is written to the kit too
    (hand it to the branches again).

    Raises
    ------
    ConfigError
        When the CA key is not in the federation directory (kept offline).
    """
    host, port = parse_address(server_address or fed.server_address)
    ca_key_path = fed.path(fed.data["ca"]["key"])
    ca_cert_path = fed.path(fed.data["ca"]["cert"])
    assert ca_key_path is not None and ca_cert_path is not None
    if not ca_key_path.exists():
        raise ConfigError(
            f"{ca_key_path} (the CA key) is missing; bring it back from offline storage"
        )
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    sans = server_sans(host, extra_sans)
    key, cert = make_server_cert(ca_key, ca_cert, sans, days=days)  # type: ignore[arg-type]
    write_cert(fed.root / fed.data["server"]["cert"], cert)
    write_private(fed.root / fed.data["server"]["key"], pem_key(key))
    fed.data["server"]["sans"] = sans
    fed.data["server_address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    fed.save()
    write_kit(fed)
    return sans


# --------------------------------------------------------------- next steps
def next_steps(fed: Federation) -> str:
    """The numbered list printed after ``federation init``."""
    d = fed.root
    return "\n".join(
        [
            f"Federation written to {d} (see {FEDERATION_FILE}); it holds no branch key.",
            "Next steps:",
            "  1. Each branch, on its own machine, makes its keys and a request file:\n"
            "       fedcrm node init --branch-id <branch> --out /srv/fedcrm/<branch>\n"
            "     and sends you <branch>.request.json (public keys only; compare the "
            "fingerprint it prints over the phone).",
            "  2. Admit each branch (records its public keys in "
            f"{d}/server/admitted.json):\n"
            f"       fedcrm server register --federation {d} --request <branch>.request.json",
            f"  3. Start the SuperLink (TLS, node authentication; registers the admitted "
            f"branches at every start):\n       fedcrm server start --federation {d}",
            "  4. Add the connection to $FLWR_HOME/config.toml (default ~/.flwr):\n"
            f"       fedcrm federation connection --federation {d}",
            f"  5. Hand {d}/kit/ (CA certificate and address, nothing secret) to every branch; "
            f"keep {d}/ca/ca.key offline. The branch starts its SuperNode with\n"
            "       fedcrm node start --federation kit --branch-dir /srv/fedcrm/<branch> "
            "--data-path /path/to/export --approve-app <hash>",
            "  6. Run a job and watch it (who is online: "
            f"`fedcrm server nodes --federation {d}`):\n"
            "       flwr run . fedcrm --run-config \"config-overrides='federation.rounds=5' "
            f"output-dir='/srv/fedcrm/runs' server-dir='{d}/server'\"\n"
            "       flwr ls fedcrm        flwr log <run-id> fedcrm",
        ]
    )
