"""Checks run before a SuperLink or SuperNode starts; each problem names the setting to fix.

Flower itself reports a bad certificate or key late and vaguely (a SuperNode
retrying forever, "[code: 2004] Failed to activate SuperNode"); these checks
catch the usual mistakes first: a wrong CA, an expired certificate or one
whose SANs miss the address, a key that does not match its certificate, key
files missing or readable by others, a branch export that breaks the data
contract, and malformed node-config values.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcrm.deploy.tls import cert_sans, is_ip, is_private_mode
from fedcrm.errors import ConfigError


@dataclass
class Report:
    """Problems found (each names a setting) and notes (informational)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, setting: str, message: str) -> None:
        """Record a problem with ``setting`` (a flag or node-config key)."""
        self.problems.append(f"{setting}: {message}")

    def raise_if_any(self, what: str) -> None:
        """Raise one ConfigError listing every problem."""
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise ConfigError(f"cannot start {what}; fix these settings:\n{lines}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def load_cert(path: Path | None, setting: str, report: Report) -> x509.Certificate | None:
    """A PEM certificate, or None with a problem recorded."""
    if path is None:
        report.add(setting, "not set")
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.add(setting, f"{path} does not exist")
        return None
    except OSError as exc:
        report.add(setting, f"{path} cannot be read ({exc.strerror})")
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        report.add(setting, f"{path} is not a PEM certificate")
        return None


def check_validity(cert: x509.Certificate, path: Path, setting: str, report: Report) -> None:
    """Not expired and already valid."""
    now = _now()
    if cert.not_valid_after_utc <= now:
        report.add(
            setting,
            f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; re-issue it "
            "(`fedcrm federation cert --federation DIR`)",
        )
    elif cert.not_valid_before_utc > now:
        report.add(
            setting,
            f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(check this machine's clock)",
        )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def covers(cert: x509.Certificate, host: str) -> bool:
    """Whether the certificate's SANs cover ``host`` (IP literal or DNS name, ``*.`` wildcards)."""
    names = cert_sans(cert)
    if is_ip(host):
        ip = ipaddress.ip_address(host)
        return any(is_ip(n) and ipaddress.ip_address(n) == ip for n in names)
    host = host.lower().rstrip(".")
    for n in names:
        n = n.lower().rstrip(".")
        if n == host:
            return True
        if n.startswith("*.") and "." in host and host.split(".", 1)[1] == n[2:]:
            return True
    return False


def check_private_file(path: Path | None, setting: str, report: Report) -> bool:
    """A secret file that exists, is readable and is mode 0600 (or stricter)."""
    if path is None:
        report.add(setting, "not set")
        return False
    if not path.is_file():
        report.add(setting, f"{path} does not exist")
        return False
    try:
        path.read_bytes()
    except OSError as exc:
        report.add(setting, f"{path} cannot be read ({exc.strerror})")
        return False
    if not is_private_mode(path):
        report.add(setting, f"{path} is readable by group or others; run `chmod 600 {path}`")
        return False
    return True


def check_server_files(
    *,
    ca_path: Path | None,
    cert_path: Path | None,
    key_path: Path | None,
    host: str,
    report: Report,
    settings: tuple[str, str, str] = ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"),
) -> None:
    """The SuperLink's CA, certificate and key: readable, valid, matching, covering ``host``."""
    s_ca, s_cert, s_key = settings
    ca = load_cert(ca_path, s_ca, report)
    cert = load_cert(cert_path, s_cert, report)
    if ca is not None and ca_path is not None:
        check_validity(ca, ca_path, s_ca, report)
    if cert is not None and cert_path is not None:
        check_validity(cert, cert_path, s_cert, report)
        if not covers(cert, host):
            report.add(
                s_cert,
                f"{cert_path} covers {', '.join(cert_sans(cert)) or 'no names'} but SuperNodes "
                f"connect to {host}; re-issue it for that address "
                f"(`fedcrm federation cert --federation DIR --server-address {host}:PORT`)",
            )
        if ca is not None and not issued_by(cert, ca):
            report.add(
                s_ca,
                f"{ca_path} did not sign {cert_path}; use the CA of the same federation",
            )
    if check_private_file(key_path, s_key, report) and cert is not None and key_path is not None:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            report.add(s_key, f"{key_path} is not an unencrypted PEM private key")
            return
        if key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            report.add(s_key, f"{key_path} is not the key of {cert_path}")


def check_node_auth_key(path: Path | None, setting: str, report: Report) -> None:
    """An EC private key on a NIST curve in OpenSSH format (what flower-supernode loads)."""
    if not check_private_file(path, setting, report):
        return
    assert path is not None
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        report.add(
            setting,
            f"{path} is not an unencrypted OpenSSH private key (Flower needs EC P-384 in "
            "OpenSSH format, as `fedcrm node init` writes)",
        )
        return
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        report.add(setting, f"{path} is not an EC key on a NIST curve (Flower needs P-384)")


def check_signing_key(path: Path | None, setting: str, report: Report) -> None:
    """The branch's Ed25519 ledger signing key."""
    if not check_private_file(path, setting, report):
        return
    from fedcrm.errors import KeyFileError
    from fedcrm.privacy.signing import load_private_key

    try:
        load_private_key(path)  # type: ignore[arg-type]
    except KeyFileError as exc:
        report.add(setting, str(exc))


def check_tls_handshake(ca_path: Path, address: str, report: Report, timeout: float = 3.0) -> None:
    """Verify the SuperLink's certificate with ``ca_path`` when it is reachable now.

    An unreachable SuperLink is only a note (the SuperNode keeps retrying).
    """
    from fedcrm.deploy.tls import parse_address

    host, port = parse_address(address)
    try:
        ctx = ssl.create_default_context(cafile=str(ca_path))
    except (ssl.SSLError, OSError):
        return  # load_cert reported it
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            pass
    except ssl.SSLCertVerificationError as exc:
        report.add(
            "--root-certificates",
            f"{ca_path} does not verify the SuperLink at {address} ({exc.verify_message}); "
            "use the ca.crt of the federation this SuperLink belongs to, or check --superlink",
        )
    except ssl.SSLError as exc:
        report.add("--superlink", f"{address} does not speak TLS ({exc.reason}); is it --insecure?")
    except OSError as exc:
        report.notes.append(
            f"SuperLink {address} not reachable now ({exc.strerror or exc}); "
            "the SuperNode will keep retrying"
        )


def check_port_free(host: str, port: int, setting: str, report: Report) -> None:
    """The port is free to bind (two SuperNodes on a host need different runtime ports)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As the Flower servers do: connections in TIME_WAIT (a restart) do not block.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            report.add(
                setting,
                f"{host}:{port} is already in use (another SuperNode or SuperLink on this "
                "host?); choose another port",
            )


def check_data(node_config: Mapping[str, Any], branch_id: str, report: Report) -> None:
    """Validate the branch's data (export or database) as its ClientApp will read it.

    Problems are summarised one line per kind and never quote a value;
    warnings (e.g. a branch too small to train) become notes, and so does a
    one-branch export whose rows name another branch than ``branch_id``.
    """
    from fedcrm.client.branch import BranchSettings
    from fedcrm.data.contract import branch_id_mismatch, branch_ids_of
    from fedcrm.errors import DataSourceError

    try:
        settings = BranchSettings.from_node_config(node_config)
        source = settings.source()
    except ConfigError:
        return  # check_node_config names the setting
    if settings.data_path is not None:
        setting = "--data-path"
    else:
        setting = "--data-url" if settings.data_url else "--data-url-file"
    try:
        inspection = source.inspect(max_problems=0, events=False)
    except DataSourceError as exc:
        report.add(setting, str(exc))
        return
    except ConfigError as exc:
        report.add("--spec", str(exc))
        return
    summaries = inspection.summaries
    if summaries:
        shown = "; ".join(str(s) for s in summaries[:5])
        more = len(summaries) - 5
        tail = f" (and {more} more kinds)" if more > 0 else ""
        report.add(
            setting,
            f"{source.describe()} breaks the data contract: {shown}{tail}; see "
            "`fedcrm data validate`",
        )
        return
    report.notes.extend(str(w) for w in inspection.warnings)
    customers = inspection.customers
    if customers is not None:
        ids = branch_ids_of(customers)
        if len(ids) > 1 and branch_id not in ids:
            report.add(
                "--branch-id",
                f"the data at {source.describe()} holds {len(ids)} branches and none is "
                f"{branch_id!r}",
            )
        mismatch = branch_id_mismatch(customers, branch_id)
        if mismatch is not None:
            report.notes.append(f"{setting}: {mismatch}")


def check_node_config(node_config: Mapping[str, Any], report: Report) -> None:
    """The node config the ClientApp will parse (same rules, checked before start)."""
    from fedcrm.client.branch import BranchSettings

    try:
        BranchSettings.from_node_config(node_config)
    except ConfigError as exc:
        text = str(exc)
        key = text.split("`")[1] if text.count("`") >= 2 else "--node-config"
        report.add(f"--{key}" if not key.startswith("-") else key, text)


def node_config_string(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` text: ``key="value"`` pairs (paths quoted as TOML strings)."""
    parts = []
    for key, value in node_config.items():
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value!r}")
        else:
            text = str(value)
            if '"' in text or "\\" in text or "\n" in text:
                raise ConfigError(f"--{key}: {text!r} may not contain quotes or backslashes")
            parts.append(f'{key}="{text}"')
    return " ".join(parts)
