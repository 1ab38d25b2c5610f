"""Certificates for the receiver: a local CA made once with trustme, and a leaf issued from it.

The CA is kept in the state directory (`ca.pem`, `ca-key.pem`) and reused on every start, so a
client that trusted `ca.pem` once keeps working. The leaf (`server.pem`, key and chain) is issued
again on each start, so new `--hostname` names take effect. trustme's certificates are meant for
testing and local use; a public endpoint brings its own with `--cert/--key`.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ot_hook import home

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
LEAF_LIFETIME = datetime.timedelta(days=365)  # some clients refuse longer-lived leaves


class KeyType(StrEnum):
    ECDSA = "ecdsa"
    RSA = "rsa"  # for older TLS stacks: a Mono-based .NET sender cannot read ECDSA


class CertError(Exception):
    """A certificate or key cannot be made or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class LocalCA:
    ca: trustme.CA
    key_type: KeyType
    created: bool  # made on this start (first start, or a new key type asked for)
    replaced: KeyType | None  # the key type of the CA it replaced, if any


def _key_type_of(cert_pem: bytes) -> KeyType:
    public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    return KeyType.RSA if isinstance(public_key, rsa.RSAPublicKey) else KeyType.ECDSA


def _trustme_key_type(key_type: KeyType) -> trustme.KeyType:
    return trustme.KeyType.RSA if key_type is KeyType.RSA else trustme.KeyType.ECDSA


def load_or_create_ca(state: Path, key_type: KeyType | None) -> LocalCA:
    """The CA kept in `state`; a new one when there is none or another key type is asked for.
    Raises CertError (a CA that cannot be loaded) and HomeError (one that cannot be written)."""
    cert_path, key_path = state / home.CA_CERT, state / home.CA_KEY
    replaced: KeyType | None = None
    if cert_path.exists() and key_path.exists():
        try:
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            existing = _key_type_of(cert_pem)
            if key_type is None or key_type is existing:
                return LocalCA(trustme.CA.from_pem(cert_pem, key_pem), existing, False, None)
            replaced = existing
        except (ValueError, OSError) as exc:
            raise CertError(
                f"cannot load the local CA from {cert_path}: {exc}; "
                f"remove {cert_path} and {key_path} to make a new one"
            ) from None
    chosen = key_type or KeyType.ECDSA
    ca = trustme.CA(organization_name="ot-hook", key_type=_trustme_key_type(chosen))
    home.write_private(key_path, ca.private_key_pem.bytes())
    home.write_public(cert_path, ca.cert_pem.bytes())
    return LocalCA(ca, chosen, True, replaced)


def issue_leaf(state: Path, local: LocalCA, hostnames: tuple[str, ...]) -> Path:
    """Issue the server certificate for localhost and `hostnames`; returns the `server.pem` path.
    Raises CertError, and HomeError when `server.pem` cannot be written (a full disk...)."""
    names = list(dict.fromkeys((*DEFAULT_NAMES, *hostnames)))
    try:
        leaf = local.ca.issue_cert(
            *names,
            organization_name="ot-hook",
            not_after=datetime.datetime.now(datetime.UTC) + LEAF_LIFETIME,
            key_type=_trustme_key_type(local.key_type),
        )
    except ValueError as exc:
        raise CertError(f"cannot issue a certificate for {', '.join(names)}: {exc}") from None
    path = state / home.SERVER_CERT
    home.write_private(path, leaf.private_key_and_cert_chain_pem.bytes())
    return path


def fingerprint(cert_path: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as AA:BB:... (what browsers show)."""
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKey


def server_context(cert_file: Path, key_file: Path | None = None) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 at least) presenting the given certificate chain."""
    for path in (cert_file, key_file):
        if path is not None and not path.exists():
            raise CertError(f"cannot read {path}: no such file")
        if path is not None and not path.is_file():
            raise CertError(f"cannot read {path}: not a regular file")
        if path is not None and path.stat().st_size == 0:
            raise CertError(f"cannot read {path}: it is empty")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # Never OpenSSL's passphrase prompt: serve often runs with no one at the terminal.
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise CertError(f"the key {key_file or cert_file} is protected by a passphrase: give "
                        "serve an unencrypted copy (openssl pkey -in KEY -out PLAIN)") from None
    except (ssl.SSLError, OSError) as exc:
        raise CertError(
            f"cannot use the certificate {cert_file}"
            + (f" with key {key_file}" if key_file else "")
            + f": {getattr(exc, 'reason', None) or exc}"
        ) from None
    return context
