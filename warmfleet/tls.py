"""TLS material, in one place for every process: a self-signed certificate and its key (the first try of
`warmfleet tls self-signed`, and the one each node agent makes for its data plane), reading the PEM files
the settings name, and the ``ssl`` context a client verifies a gateway's HTTPS port with.

The gateway's own credentials are built from these in ``gateway.tls``; the gRPC client's in
``warmfleet.client``. ``cryptography`` is imported only by the functions that make or check a pair, so
a client that merely reads a PEM file does not pay for it.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from warmfleet.errors import InvalidInput

# What a first try is for: this machine, under every name a local client may give it.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
SELF_SIGNED_DAYS = 365
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


@dataclass(frozen=True)
class CertificatePair:
    """A PEM certificate (chain) and the PEM private key that goes with it."""

    certificate_pem: bytes
    private_key_pem: bytes


def self_signed(hosts: Sequence[str], valid_days: int = SELF_SIGNED_DAYS,
                now: datetime | None = None) -> CertificatePair:
    """A certificate for ``hosts`` (DNS names or IP addresses, each a subject alternative name) signed by
    its own key: a client that holds the certificate trusts it, and nobody else's.

    An ECDSA P-256 key: a few milliseconds to make (an agent makes one at each start), and every TLS
    stack in use takes it. The certificate is an end-entity one (not a CA): it can vouch for nothing
    but itself, so a client that trusts it trusts no certificate it might sign."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise InvalidInput("hosts", "name at least one host the certificate is for")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "warmfleet self-signed")])
    now = now or datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))  # a client whose clock is a little behind
               .not_valid_after(now + timedelta(days=valid_days))
               .add_extension(x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                              critical=False))
    cert = builder.sign(key, hashes.SHA256())
    return CertificatePair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()))


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def write_pair(pair: CertificatePair, cert_path: Path, key_path: Path) -> None:
    """Write the certificate (readable by all: it is public) and the key (mode 0600, from its creation:
    never readable by others, even for a moment)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)  # O_CREAT's mode applies only to a file it creates
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pair.private_key_pem)
    cert_path.write_bytes(pair.certificate_pem)


def read_pem(path: str | Path, setting: str) -> bytes:
    """The bytes of a PEM file a setting names; ``InvalidInput`` naming the setting when it cannot be read
    or holds no PEM block."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InvalidInput(setting, f"cannot read {path}: {err.strerror or err}") from err
    if b"-----BEGIN " not in data:
        raise InvalidInput(setting, f"{path} is not a PEM file (no -----BEGIN line)")
    return data


def check_pair(cert_pem: bytes, key_pem: bytes, cert_setting: str, key_setting: str) -> None:
    """Refuse a certificate or key that does not parse, or a key that is not the certificate's, naming the
    setting at fault: the gateway checks before it binds, so that the mistake is not a handshake failure
    every client sees later."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as err:
        raise InvalidInput(cert_setting, f"is not a PEM certificate: {err}") from err
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:  # TypeError: the key is encrypted
        raise InvalidInput(key_setting, f"is not an unencrypted PEM private key: {err}") from err
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, raw)
            != key.public_key().public_bytes(serialization.Encoding.DER, raw)):
        raise InvalidInput(key_setting, f"is not the key of the certificate {cert_setting} names")


def client_ssl_context(ca_path: str = "") -> ssl.SSLContext:
    """An ``ssl`` context that verifies a server's certificate and name: against ``ca_path`` (the CA that
    issued it, or a self-signed certificate itself), or the system's roots when empty."""
    context = ssl.create_default_context(cafile=ca_path or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
