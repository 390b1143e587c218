"""TLS for the REST API: the operator's certificate and key, or (``http.tls = auto``) a local certificate
authority made on first start in the state directory, and a server certificate it signs for the names the API is
reached by. The CA's certificate (``tls/ca.pem``) is what clients trust: the overhaul CLI finds it by itself, az
through ``REQUESTS_CA_BUNDLE``. Keys are 0600; the CA key never leaves the state directory."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overhaul.serve.state_dir import StateDirError, make_private, write_private

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
CA_DAYS = 3650
SERVER_DAYS = 397  # the longest a public CA may issue; renewed on a start within RENEW_DAYS of its end
RENEW_DAYS = 30
# Addresses that mean "every interface": the certificate names the machine instead.
WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None  # the local CA's certificate (None: the operator's own certificate)


def ca_path(state_dir: Path) -> Path:
    return state_dir / TLS_DIR / CA_CERT


def server_names(host: str, advertise_host: str = "") -> list[str]:
    """What the local certificate names: loopback, this machine, the listening address and the advertised one."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    for extra in (host, advertise_host):
        if extra not in WILDCARDS and extra not in names:
            names.append(extra)
    return names


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "overhaul"), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def _subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(directory: Path, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"overhaul local CA ({socket.gethostname()})")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(directory / CA_KEY, _pem_key(key))
    write_private(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    (directory / CA_CERT).chmod(0o644)  # public: clients are given it
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateDirError(
            f"the local CA in {directory} cannot be read ({exc}): remove {directory} to have a new one made (clients "
            "must then be given the new ca.pem)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StateDirError(f"{directory / CA_KEY} is not the local CA's key: remove {directory} to have one made")
    return cert, key


def _server_current(directory: Path, names: list[str], ca: x509.Certificate, now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
        (directory / SERVER_KEY).stat()
    except (OSError, ValueError):
        return False
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = set(_subject_alt_names(names))
    fresh = cert.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS)
    return cert.issuer == ca.subject and set(alt) >= wanted and fresh


def _make_server(
    directory: Path, names: list[str], ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], now: datetime.datetime
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(directory / SERVER_KEY, _pem_key(key))
    write_private(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def local_certificate(state_dir: Path, names: list[str]) -> TlsFiles:
    """The local CA (made once) and a server certificate for ``names`` (made again when a name is missing or it
    nears its end)."""
    directory = state_dir / TLS_DIR
    make_private(directory)
    now = datetime.datetime.now(datetime.UTC)
    ca = _load_ca(directory) or _make_ca(directory, now)
    if not _server_current(directory, names, ca[0], now):
        _make_server(directory, names, ca, now)
    return TlsFiles(directory / SERVER_CERT, directory / SERVER_KEY, directory / CA_CERT)


def local_ca_pems(state_dir: Path) -> tuple[str, str]:
    """The local CA's certificate and key, as PEM (to share them with the other replicas)."""
    directory = state_dir / TLS_DIR
    return (directory / CA_CERT).read_text(), (directory / CA_KEY).read_text()


def adopt_ca(state_dir: Path, cert_pem: str, key_pem: str) -> bool:
    """Makes (``cert_pem``, ``key_pem``) this state directory's local CA unless it is already; True when it changed.
    The server certificate the previous CA signed is removed: ``local_certificate`` makes one anew."""
    directory = state_dir / TLS_DIR
    if (directory / CA_CERT).read_text() == cert_pem:
        return False
    try:
        x509.load_pem_x509_certificate(cert_pem.encode())
        serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as exc:
        raise StateDirError(f"the shared local CA cannot be read ({exc}): it was not adopted") from None
    write_private(directory / CA_KEY, key_pem.encode())
    write_private(directory / CA_CERT, cert_pem.encode())
    (directory / CA_CERT).chmod(0o644)
    (directory / SERVER_CERT).unlink(missing_ok=True)
    return True


def client_context(ca: Path) -> ssl.SSLContext:
    """What trusts the local CA only: a standby forwarding to the leader, which the same CA certified."""
    return ssl.create_default_context(cafile=ca)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise StateDirError(f"http.tls_cert / http.tls_key ({files.cert}, {files.key}) cannot be used: {exc}") from None
    return context
