"""The local stack's development CA, its server certificates, and a trust bundle that includes it.

Everything lives in one directory (the stack's data directory, e.g. ``.localstack/tls``):

- ``ca.pem`` / ``ca-key.pem``: a self-signed CA, made once and kept (10 years);
- ``server.pem`` / ``server-key.pem``: a certificate for ``localhost``, ``127.0.0.1`` and ``::1``
  (and any other names asked for), signed by the CA, re-made when a name is missing or it
  expires within a week;
- ``trust-bundle.pem``: the roots this process trusts already (the bundle in ``REQUESTS_CA_BUNDLE``
  or ``SSL_CERT_FILE``, else certifi's, else the system's) plus the CA, for ``SSL_CERT_FILE`` /
  ``REQUESTS_CA_BUNDLE``, so trusting the CA never stops other CAs from being trusted.

Private keys are written 0600 from the start (never world-readable, even for a moment).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=397)  # what public CAs may issue at most
RENEW_BEFORE = dt.timedelta(days=7)
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass(frozen=True)
class DevelopmentCertificates:
    """Paths of the files ``ensure_development_certificates`` made or found."""
    directory: Path
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    trust_bundle: Path


def ensure_development_certificates(directory: Path | str,
                                    server_names: Iterable[str] = DEFAULT_SERVER_NAMES) -> DevelopmentCertificates:
    """Make (or reuse) the CA, a server certificate covering ``server_names``, and the trust bundle."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    paths = DevelopmentCertificates(directory, directory / "ca.pem", directory / "ca-key.pem",
                                    directory / "server.pem", directory / "server-key.pem",
                                    directory / "trust-bundle.pem")
    names = sorted(set(server_names) | set(DEFAULT_SERVER_NAMES))
    if not (paths.ca_certificate.exists() and paths.ca_key.exists()):
        _make_ca(paths)
    if _server_certificate_needs_renewal(paths, names):
        _make_server_certificate(paths, names)
    _write_trust_bundle(paths)
    return paths


def server_ssl_context(certificate: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) for ``certificate`` and its private ``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(key))
    return context


def public_roots_pem(exclude: Path | None = None) -> bytes:
    """The roots to keep trusting: the bundle this process was told to use (``REQUESTS_CA_BUNDLE``,
    ``SSL_CERT_FILE``: e.g. a company's proxy CA), else this machine's roots (which hold any CA its
    administrator added) followed by certifi's. ``exclude`` is never used (our own bundle, when it
    is already exported: re-making it from itself must not lose the machine's roots)."""
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        candidate = os.environ.get(variable)
        if candidate and os.path.isfile(candidate) and (exclude is None or not _same_file(candidate, exclude)):
            return Path(candidate).read_bytes()
    bundles = []
    # openssl_cafile: the machine's own bundle (cafile would be SSL_CERT_FILE again, our own bundle).
    for candidate in (ssl.get_default_verify_paths().openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate) and (exclude is None or not _same_file(candidate, exclude)):
            bundles.append(Path(candidate).read_bytes())
            break
    try:
        import certifi
        bundles.append(Path(certifi.where()).read_bytes())
    except ImportError:
        pass
    return b"\n".join(bundle.rstrip(b"\n") + b"\n" for bundle in bundles)


def _same_file(first: str | Path, second: str | Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    _write_atomically(path, data, 0o600)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _make_ca(paths: DevelopmentCertificates) -> None:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "localbatch development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localbatch development CA")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private_key(paths.ca_key, key)
    _write_atomically(paths.ca_certificate, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _server_certificate_needs_renewal(paths: DevelopmentCertificates, names: list[str]) -> bool:
    if not (paths.server_certificate.exists() and paths.server_key.exists()):
        return True
    try:
        certificate = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
        ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    present = {str(value) for value in alternative.get_values_for_type(x509.DNSName)}
    present |= {str(value) for value in alternative.get_values_for_type(x509.IPAddress)}
    expiring = certificate.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE
    return expiring or certificate.issuer != ca.subject or not set(names) <= present


def _subject_alternative_names(names: list[str]) -> list[x509.GeneralName]:
    alternative: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative.append(x509.DNSName(name))
    return alternative


def _make_server_certificate(paths: DevelopmentCertificates, names: list[str]) -> None:
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(names)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private_key(paths.server_key, key)
    _write_atomically(paths.server_certificate, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_trust_bundle(paths: DevelopmentCertificates) -> None:
    roots = public_roots_pem(exclude=paths.trust_bundle)
    if roots and not roots.endswith(b"\n"):
        roots += b"\n"
    bundle = roots + b"# localbatch development CA\n" + paths.ca_certificate.read_bytes()
    if not paths.trust_bundle.exists() or paths.trust_bundle.read_bytes() != bundle:
        _write_atomically(paths.trust_bundle, bundle, 0o644)
