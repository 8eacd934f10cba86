"""Provisioning of a federation directory: CA, TLS certificate, node keys, HE keys.

``fedcrm federation init --out DIR --branches b1,b2 --server-address HOST:PORT``
writes (paths relative to ``DIR``; private keys mode 0600, their folders 0700)::

    federation.json                 the layout below, the server address, the branches
    ca/ca.crt  ca/ca.key            the federation's certificate authority
    server/                         ship to the central team (the SuperLink host)
        ca.crt server.pem server.key  TLS certificate (SANs cover HOST) and key
        he_public.ctx he_params.json  CKKS public context (no secret key)
        admitted.json                 branches the SuperLink admits (`fedcrm server register`)
    he/                             the key ceremony's output; he_secret.ctx is for
                                    branches only: keep it offline, never on the server
    public/nodes/<b>.pub            node authentication public keys (`fedcrm server register`)
    public/signing/<b>.pub          ledger signing public keys (`fedcrm privacy verify --keys`)
    branches/<b>/                   ship to branch <b>
        ca.crt                        verifies the SuperLink (`--root-certificates`)
        node_auth_key(.pub)           EC P-384 key pair, OpenSSH format (Flower node auth)
        signing/<b>.key(.pub)         Ed25519 ledger signing key (fedcrm.privacy.signing)
        he_secret.ctx he_params.json  CKKS secret context (HE runs)
        ledger.jsonl  models/ cache/  written by the branch at run time (cache/: its
                                    computed features, private)

Branch IT does not need the CA key or other branches' files; the central team
needs only ``server/`` and ``public/``. Whoever runs ``federation init`` holds
every secret for a moment: run it on a provisioning machine, not on the
aggregator, and hand out the folders.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcrm.errors import ConfigError, KeyFileError

FORMAT = 1
FEDERATION_FILE = "federation.json"
NODE_KEY = "node_auth_key"
CA_DAYS = 3650
CERT_DAYS = 365


# ------------------------------------------------------------------ helpers
def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> ``(host, port)``.

    Raises
    ------
    ConfigError
        Naming ``--server-address`` when the address is malformed.
    """
    text = str(address).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not (0 < port < 65536):
        raise ConfigError(
            f"--server-address {address!r} must be HOST:PORT (e.g. 10.0.0.5:9092 or "
            "superlink.example.com:9092)"
        )
    return host, port


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_branch_id(branch_id: str) -> str:
    """A branch id usable as a file name and a node-config value."""
    b = str(branch_id).strip()
    if not b or b in (".", "..") or any(not (c.isalnum() or c in "-_.") for c in b):
        raise ConfigError(
            f"branch id {branch_id!r}: use letters, digits, '-', '_' and '.' only (--branches)"
        )
    return b


def write_private(path: Path, data: bytes) -> Path:
    """Write a secret file created with mode 0600 (never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)
    return path


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def is_private_mode(path: Path) -> bool:
    """True when neither group nor others may access ``path``."""
    return not (path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --------------------------------------------------------------- certificates
def make_ca(
    name: str = "fedcrm federation CA", *, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (EC P-384) that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def server_sans(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The SAN entries of the server certificate: the address host plus ``extra``."""
    out: list[str] = []
    for name in (host, *extra):
        name = str(name).strip()
        if name and name not in out:
            out.append(name)
    return out


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
    *,
    days: int = CERT_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate (EC P-256) for ``sans`` (IP addresses and/or DNS names)."""
    if not sans:
        raise ConfigError("the server certificate needs at least one name (--server-address)")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(s)) if is_ip(s) else x509.DNSName(s) for s in sans
    ]
    start = not_before or (_now() - dt.timedelta(minutes=5))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    """Write a certificate as PEM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def cert_sans(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate covers."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


# ------------------------------------------------------------ node auth keys
def make_node_auth_key(private_path: Path) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format, as Flower's SuperNode authentication expects.

    ``private_path`` gets the private key (mode 0600), ``private_path.pub`` the
    public key to register with ``flwr supernode register``.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(private_path, priv)
    pub_path = private_path.with_name(private_path.name + ".pub")
    pub_path.write_bytes(pub + b"\n")
    return private_path, pub_path


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
    def branches(self) -> dict[str, dict[str, str]]:
        """Branch id -> its file paths (relative to the federation directory)."""
        return dict(self.data.get("branches", {}))

    @property
    def he(self) -> bool:
        """Whether the key ceremony ran (encrypted runs possible)."""
        return bool(self.data.get("he", {}).get("enabled"))

    def branch(self, branch_id: str) -> dict[str, Path | None]:
        """One branch's files, resolved; a clear error for an unknown branch."""
        if branch_id not in self.branches:
            known = ", ".join(sorted(self.branches)) or "none"
            raise ConfigError(
                f"--branch-id {branch_id!r} is not in {self.root / FEDERATION_FILE} "
                f"(branches: {known}); onboard it with "
                f"`fedcrm node init --federation {self.root} --branch-id {branch_id} --out DIR`"
            )
        return {k: self.path(v) for k, v in self.branches[branch_id].items()}

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
            "`fedcrm federation init --out DIR --branches b1,b2 --server-address HOST:PORT`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--federation {directory}: {FEDERATION_FILE} is unreadable: {exc}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "server_address" not in data:
        raise ConfigError(
            f"--federation {directory}: {FEDERATION_FILE} is not a fedcrm federation file "
            f"(format {FORMAT})"
        )
    return Federation(root, data)


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def _provision_branch(fed: Federation, branch_id: str, bdir: Path) -> dict[str, str]:
    from fedcrm.privacy.signing import generate_signing_key

    root = fed.root
    _private_dir(bdir)
    shutil.copyfile(root / "ca" / "ca.crt", bdir / "ca.crt")
    node_priv, node_pub = make_node_auth_key(bdir / NODE_KEY)
    sign_priv, sign_pub = generate_signing_key(_private_dir(bdir / "signing"), branch_id)
    (root / "public" / "nodes").mkdir(parents=True, exist_ok=True)
    (root / "public" / "signing").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(node_pub, root / "public" / "nodes" / f"{branch_id}.pub")
    shutil.copyfile(sign_pub, root / "public" / "signing" / f"{branch_id}.pub")
    files = {
        "dir": _rel(root, bdir),
        "ca_cert": _rel(root, bdir / "ca.crt"),
        "node_auth_private_key": _rel(root, node_priv),
        "node_auth_public_key": _rel(root, node_pub),
        "signing_key": _rel(root, sign_priv),
        "signing_public_key": _rel(root, sign_pub),
        "ledger_path": _rel(root, bdir / "ledger.jsonl"),
        "model_dir": _rel(root, bdir / "models"),
        "cache_dir": _rel(root, bdir / "cache"),
    }
    if fed.he:
        secret = fed.path(fed.data["he"]["secret_context"])
        assert secret is not None
        if not secret.exists():
            raise KeyFileError(
                f"{secret} (the CKKS secret context of this federation) is missing; onboarding "
                "a branch to an encrypted federation needs it (bring it back from offline "
                "storage, or re-run the key ceremony for every branch)"
            )
        write_private(bdir / "he_secret.ctx", secret.read_bytes())
        shutil.copyfile(secret.with_name("he_params.json"), bdir / "he_params.json")
        files["he_secret_context"] = _rel(root, bdir / "he_secret.ctx")
    return files


def init_federation(
    out_dir: str | os.PathLike[str],
    branches: Sequence[str],
    server_address: str,
    *,
    extra_sans: Sequence[str] = (),
    he: bool = True,
    cert_days: int = CERT_DAYS,
    overwrite: bool = False,
) -> Federation:
    """Create a federation directory (see the module docstring for its layout).

    Raises
    ------
    ConfigError
        On a malformed address or branch id, duplicate branches, or an existing
        federation without ``overwrite``.
    """
    host, port = parse_address(server_address)
    ids = [check_branch_id(b) for b in branches if str(b).strip()]
    if not ids:
        raise ConfigError("--branches needs at least one branch id (e.g. --branches b1,b2)")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--branches lists a branch twice: {','.join(ids)}")
    root = Path(out_dir).resolve()
    if (root / FEDERATION_FILE).exists():
        if not overwrite:
            raise ConfigError(
                f"--out {out_dir}: a federation already exists there; add branches with "
                "`fedcrm node init --federation DIR ...`, or pass --overwrite to start afresh"
            )
        for sub in ("ca", "server", "he", "public", "branches"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca()
    _private_dir(root / "ca")
    write_private(root / "ca" / "ca.key", _pem_key(ca_key))
    write_cert(root / "ca" / "ca.crt", ca_cert)

    sans = server_sans(host, extra_sans)
    srv_key, srv_cert = make_server_cert(ca_key, ca_cert, sans, days=cert_days)
    sdir = _private_dir(root / "server")
    shutil.copyfile(root / "ca" / "ca.crt", sdir / "ca.crt")
    write_cert(sdir / "server.pem", srv_cert)
    write_private(sdir / "server.key", _pem_key(srv_key))

    data: dict[str, Any] = {
        "format": FORMAT,
        "created": _now().isoformat(timespec="seconds"),
        "server_address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "ca": {"cert": "ca/ca.crt", "key": "ca/ca.key"},
        "server": {
            "ca_cert": "server/ca.crt",
            "cert": "server/server.pem",
            "key": "server/server.key",
            "sans": sans,
        },
        "he": {"enabled": bool(he)},
        "public": {"nodes": "public/nodes", "signing": "public/signing"},
        "branches": {},
    }
    if he:
        from fedcrm.crypto.ckks import key_ceremony

        hdir = _private_dir(root / "he")
        secret, public = key_ceremony(hdir, overwrite=True)
        shutil.copyfile(public, sdir / "he_public.ctx")
        shutil.copyfile(hdir / "he_params.json", sdir / "he_params.json")
        data["he"].update(
            secret_context=_rel(root, secret),
            public_context=_rel(root, public),
            server_keys_dir="server",
        )
    fed = Federation(root, data)
    for b in ids:
        data["branches"][b] = _provision_branch(fed, b, root / "branches" / b)
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

    Returns the certificate's SANs.

    Raises
    ------
    ConfigError
        When the CA key is not in the federation directory (kept offline).
    """
    from cryptography.hazmat.primitives import serialization

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
    write_private(fed.root / fed.data["server"]["key"], _pem_key(key))
    fed.data["server"]["sans"] = sans
    fed.data["server_address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    fed.save()
    return sans


def onboard_branch(
    federation_dir: str | os.PathLike[str],
    branch_id: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Path | None]:
    """Add ``branch_id`` to an existing federation; its files go to ``out_dir``.

    ``out_dir`` defaults to ``DIR/branches/<branch_id>``. Returns the branch's
    resolved file paths and prints the remaining steps (registration, start).

    Raises
    ------
    ConfigError
        If the branch exists already or the federation directory is invalid.
    """
    fed = load_federation(federation_dir)
    b = check_branch_id(branch_id)
    if b in fed.branches:
        raise ConfigError(
            f"--branch-id {b} is already part of {fed.root} (its files: "
            f"{fed.path(fed.branches[b]['dir'])})"
        )
    bdir = Path(out_dir).resolve() if out_dir else fed.root / "branches" / b
    if bdir.exists() and any(bdir.iterdir()):
        raise ConfigError(f"--out {bdir} is not empty; give a new directory for branch {b}")
    fed.data["branches"][b] = _provision_branch(fed, b, bdir)
    fed.save()
    files = fed.branch(b)
    if echo is not None:
        echo(branch_steps(fed, b))
    return files


# --------------------------------------------------------------- next steps
def next_steps(fed: Federation) -> str:
    """The numbered list printed after ``federation init``."""
    d = fed.root
    first = sorted(fed.branches)[0]
    he = f" privacy=he privacy.keys_dir={d}/server" if fed.he else ""
    lines = [
        f"Federation written to {d} (see {FEDERATION_FILE}).",
        "Next steps:",
        f"  1. Central team: start the SuperLink with TLS and node authentication:\n"
        f"       fedcrm server start --federation {d}",
        f"     (runs flower-superlink --ssl-ca-certfile {d}/server/ca.crt "
        f"--ssl-certfile {d}/server/server.pem --ssl-keyfile {d}/server/server.key "
        "--enable-supernode-auth, and registers the admitted branches at every start)",
        "  2. Central team: add the connection to $FLWR_HOME/config.toml (default ~/.flwr):\n"
        f"       fedcrm federation connection --federation {d}",
        "  3. Central team: admit and register every branch's node key "
        f"(kept in {d}/{'server/admitted.json'}):\n"
        f"       fedcrm server register --federation {d} --all",
        f"  4. Ship {d}/branches/<branch>/ to each branch (and nothing else); "
        f"keep {d}/ca/ca.key" + (f" and {d}/he/he_secret.ctx" if fed.he else "") + " offline.",
        "  5. Branch IT: validate the export and start the SuperNode, e.g.\n"
        f"       fedcrm node start --federation {d} --branch-id {first} "
        "--data-path /path/to/export --epsilon-ceiling 8",
        "  6. Central team: run a job and watch it:\n"
        f"       flwr run . fedcrm --run-config \"config-overrides='federation.rounds=5{he}' "
        "output-dir='/srv/fedcrm/runs'\"\n"
        "       flwr ls fedcrm        flwr log <run-id> fedcrm",
        "     The run directory is <output-dir>/run-<run-id> (summary.json, rounds.jsonl, "
        "ledger/).",
    ]
    return "\n".join(lines)


def branch_steps(fed: Federation, branch_id: str) -> str:
    """What remains after ``fedcrm node init --federation``."""
    files = fed.branch(branch_id)
    return "\n".join(
        [
            f"Branch {branch_id} added to {fed.root} (files in {files['dir']}).",
            "Next steps:",
            f"  1. Central team: fedcrm server register --federation {fed.root} "
            f"--branch-id {branch_id}",
            f"  2. Branch IT: fedcrm node start --federation {fed.root} --branch-id {branch_id} "
            "--data-path /path/to/export --epsilon-ceiling 8",
        ]
    )
