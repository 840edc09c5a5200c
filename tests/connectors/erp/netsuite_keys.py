"""Keys and self-signed x.509 certificates for NetSuite M2M tests, as NetSuite wants them mapped:
RSA 3072 (PS256) and EC P-256 (ES256), valid for one year. Made with cryptography once per test
session (an RSA 3072 key takes a fraction of a second to generate)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate, both PEM; `algorithm` is the JWT alg the key signs with."""

    private_pem: bytes
    certificate_pem: bytes
    algorithm: str

    def __repr__(self) -> str:
        # Test keys too: a repr never shows a private key.
        return f"KeyPair({self.algorithm})"


def _certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pair(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str, algorithm: str) -> KeyPair:
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(private_pem, _certificate(key, name), algorithm)


@functools.cache
def rsa_keys(name: str = "ledgerflow-m2m-rsa") -> KeyPair:
    """An RSA 3072 key and its certificate (one per `name`: ask another name for a second key)."""
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=3072), name, "PS256")


@functools.cache
def ec_keys(name: str = "ledgerflow-m2m-ec") -> KeyPair:
    """An EC P-256 key and its certificate (one per `name`)."""
    return _pair(ec.generate_private_key(ec.SECP256R1()), name, "ES256")
