"""Signed tree heads and witness signatures with the participants' startup-kit keys (``cryptography``).

A provisioned FLARE project gives each participant a kit whose ``startup/`` folder holds its
private key and certificate (``server.key``/``server.crt`` for the server, ``client.key``/
``client.crt`` for a site; RSA 2048, common name = the participant's name) and the project's root
CA certificate ``rootCA.pem``. :class:`Signer` loads such a pair; :func:`generate_signer` makes a
self-signed one for the simulator, which has no kits, and every head it signs records
``key_source: "generated, not from a kit"``.

Signature schemes, picked from the key type:

- RSA: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (``rsa-pss-sha256``). PSS rather
  than PKCS#1 v1.5 because it is the scheme RFC 8017 (section 8) recommends for new applications
  and has a security proof; the salt length is fixed so that a verifier accepts exactly one
  parameter set;
- EC: ECDSA with SHA-256, DER signature (``ecdsa-sha256``);
- Ed25519 (``ed25519``).

A certificate is accepted for a signer when its common name equals the signer's name and, given
the root CA, it was issued by it (issuer name and the CA's signature over it), and the signing time
lies within its validity dates.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from fedsegnet.ledger.canonical import canonical_bytes
from fedsegnet.ledger.errors import SignatureError

__all__ = [
    "KEY_SOURCE_KIT",
    "KEY_SOURCE_GENERATED",
    "Signer",
    "generate_signer",
    "load_certificate",
    "cert_sha256",
    "common_name",
    "check_certificate",
    "verify_signature",
    "sign_head",
    "verify_head",
    "head_body",
    "certs_from_kits",
    "root_ca_from_kits",
]

KEY_SOURCE_KIT = "kit"
KEY_SOURCE_GENERATED = "generated, not from a kit"
HEAD_TYPE = "fedsegnet.ledger.tree_head.v1"
HEAD_FIELDS = ("size", "root", "timestamp", "signer", "key_source", "log_id", "round")


def load_certificate(cert) -> x509.Certificate:
    """A certificate from a PEM path, PEM bytes/str or a loaded certificate.

    Raises:
        SignatureError: naming the file when it cannot be read or parsed.
    """
    if isinstance(cert, x509.Certificate):
        return cert
    where = "certificate"
    data = cert
    if isinstance(cert, (str, os.PathLike)) and not str(cert).lstrip().startswith("-----BEGIN"):
        where = str(cert)
        try:
            data = Path(cert).read_bytes()
        except OSError as exc:
            raise SignatureError(f"{where}: cannot read the certificate ({exc.strerror or exc})") from None
    if isinstance(data, str):
        data = data.encode("ascii")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise SignatureError(f"{where}: not a PEM certificate ({exc})") from None


def cert_pem(cert: x509.Certificate) -> str:
    """PEM text of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cert_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER bytes (its fingerprint)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's common name, ``None`` when it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _algorithm(key) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-pss-sha256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa-sha256"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    raise SignatureError(f"a {type(key).__name__} key is not supported (RSA, EC or Ed25519)")


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class Signer:
    """A participant's private key and certificate.

    Args:
        name: the participant's name (the certificate's common name).
        key: the private key (RSA, EC or Ed25519).
        cert: its certificate.
        key_source: :data:`KEY_SOURCE_KIT` or :data:`KEY_SOURCE_GENERATED`.
    """

    name: str
    key: object
    cert: x509.Certificate
    key_source: str = KEY_SOURCE_KIT

    def __post_init__(self):
        if self.key_source not in (KEY_SOURCE_KIT, KEY_SOURCE_GENERATED):
            raise SignatureError(f"key_source={self.key_source!r}: must be {KEY_SOURCE_KIT!r} or {KEY_SOURCE_GENERATED!r}")
        if common_name(self.cert) != self.name:
            raise SignatureError(f"signer {self.name!r}: the certificate's common name is {common_name(self.cert)!r}")
        pub = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        cpub = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if pub != cpub:
            raise SignatureError(f"signer {self.name!r}: the private key does not belong to the certificate")

    @classmethod
    def from_pem(cls, key_path, cert_path, name: str | None = None, key_source: str = KEY_SOURCE_KIT) -> "Signer":
        """Load a PEM private key (unencrypted, as in FLARE kits) and its certificate.

        Args:
            key_path: the private key file, e.g. ``startup/server.key``.
            cert_path: the certificate file, e.g. ``startup/server.crt``.
            name: the expected name; defaults to the certificate's common name.
            key_source: defaults to :data:`KEY_SOURCE_KIT`.

        Raises:
            SignatureError: naming the file that cannot be read, or the name that does not match.
        """
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError(f"{key_path}: cannot load the private key ({exc})") from None
        cert = load_certificate(cert_path)
        return cls(name or common_name(cert) or "", key, cert, key_source)

    @classmethod
    def from_kit(cls, startup_dir, name: str | None = None) -> "Signer":
        """Load a startup kit's key pair: ``server.key/.crt`` or else ``client.key/.crt``.

        Raises:
            SignatureError: naming the folder when it holds neither pair.
        """
        startup = Path(startup_dir)
        for stem in ("server", "client"):
            if (startup / f"{stem}.key").is_file() and (startup / f"{stem}.crt").is_file():
                return cls.from_pem(startup / f"{stem}.key", startup / f"{stem}.crt", name)
        raise SignatureError(f"{startup}: no server.key/server.crt nor client.key/client.crt (not a startup kit)")

    @property
    def algorithm(self) -> str:
        """The signature scheme name recorded next to each signature."""
        return _algorithm(self.key)

    @property
    def cert_sha256(self) -> str:
        return cert_sha256(self.cert)

    @property
    def cert_pem(self) -> str:
        return cert_pem(self.cert)

    def sign(self, data: bytes) -> str:
        """Base64 signature of ``data`` with the scheme of :attr:`algorithm`."""
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(data, _PSS, hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            sig = key.sign(data)
        else:
            raise SignatureError(f"signer {self.name!r}: a {type(key).__name__} key is not supported")
        return base64.b64encode(sig).decode("ascii")


def generate_signer(name: str, key_type: str = "ec", days: int = 3650) -> Signer:
    """A self-signed key and certificate for ``name``, for a run without kits (the simulator).

    What it signs says ``key_source: "generated, not from a kit"``: it proves the ledger was not
    changed after signing, not who signed it.

    Args:
        name: the participant name (the certificate's common name).
        key_type: ``"ec"`` (P-256, fast) or ``"rsa"`` (2048 bits, like the kits). Defaults to ``"ec"``.
        days: validity of the certificate. Defaults to 3650.

    Returns:
        A :class:`Signer` with ``key_source`` :data:`KEY_SOURCE_GENERATED`.

    Raises:
        SignatureError: naming ``key_type`` when it is not ``"ec"`` or ``"rsa"``.
    """
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise SignatureError(f"key_type={key_type!r}: must be 'ec' or 'rsa'")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return Signer(name, key, cert, KEY_SOURCE_GENERATED)


def _parse_time(value, where: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise SignatureError(f"{where}: timestamp {value!r} is not ISO-8601") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def check_certificate(cert, name: str, root_ca=None, at=None, where: str = "certificate") -> x509.Certificate:
    """Check that ``cert`` is ``name``'s and, given ``root_ca``, that the root CA issued it.

    Args:
        cert: the certificate (path, PEM or loaded).
        name: the claimed signer; must equal the certificate's common name.
        root_ca: the project's ``rootCA.pem`` (path, PEM or loaded). Defaults to ``None``: the
            issuer is not checked (a self-signed, generated certificate).
        at: when the signature was made (datetime or ISO-8601); must lie within the validity
            dates of ``cert`` (and of the root CA). Defaults to now.
        where: what to name in errors.

    Returns:
        The loaded certificate.

    Raises:
        SignatureError: naming ``where``, the name and what is wrong.
    """
    cert = load_certificate(cert)
    cn = common_name(cert)
    if cn != name:
        raise SignatureError(f"{where}: the certificate is {cn!r}'s, not {name!r}'s")
    when = _dt.datetime.now(_dt.timezone.utc) if at is None else _parse_time(at, where) if not isinstance(at, _dt.datetime) else at
    checks = [(cert, name)]
    if root_ca is not None:
        root = load_certificate(root_ca)
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SignatureError(
                f"{where}: {name!r}'s certificate was not issued by the root CA {common_name(root)!r} ({exc or 'bad signature'})"
            ) from None
        checks.append((root, f"root CA {common_name(root)!r}"))
    for c, who in checks:
        if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
            raise SignatureError(
                f"{where}: the certificate of {who} is valid from {c.not_valid_before_utc.isoformat()} to "
                f"{c.not_valid_after_utc.isoformat()}, not at {when.isoformat()}"
            )
    return cert


def verify_signature(cert, data: bytes, algorithm: str, signature: str, where: str) -> None:
    """Check a base64 ``signature`` of ``data`` by the key of ``cert``.

    Raises:
        SignatureError: naming ``where`` when the scheme does not fit the key or the signature is bad.
    """
    pub = load_certificate(cert).public_key()
    expected = _algorithm(pub)
    if algorithm != expected:
        raise SignatureError(f"{where}: signed with {algorithm!r}, but the certificate's key is for {expected!r}")
    try:
        sig = base64.b64decode(str(signature), validate=True)
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, data, _PSS, hashes.SHA256())
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        else:
            pub.verify(sig, data)
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{where}: the signature does not verify with {common_name(load_certificate(cert))!r}'s certificate") from None


def head_body(head: Mapping) -> dict:
    """The signed part of a tree head: :data:`HEAD_FIELDS` plus the type tag."""
    body = {"type": HEAD_TYPE}
    for field in HEAD_FIELDS:
        body[field] = head.get(field)
    return body


def sign_head(
    signer: Signer, size: int, root: bytes | str, log_id: str, round: int | None = None, timestamp: str | None = None
) -> dict:
    """A signed tree head ``{size, root, timestamp, signer, key_source, log_id, round, sig_alg, signature, cert_sha256}``.

    Args:
        signer: the server's :class:`Signer`.
        size: tree size (number of entries covered).
        root: the root hash (bytes or hex).
        log_id: the ledger's id (the job id).
        round: the last round the head covers, ``None`` before the first. Defaults to ``None``.
        timestamp: ISO-8601 UTC; defaults to now.

    Returns:
        The signed head as a plain dict (one line of ``heads.jsonl``).
    """
    from fedsegnet.ledger.entries import utc_now

    head = {
        "size": int(size),
        "root": root.hex() if isinstance(root, (bytes, bytearray)) else str(root),
        "timestamp": timestamp or utc_now(),
        "signer": signer.name,
        "key_source": signer.key_source,
        "log_id": str(log_id),
        "round": round,
    }
    head["sig_alg"] = signer.algorithm
    head["cert_sha256"] = signer.cert_sha256
    head["signature"] = signer.sign(canonical_bytes(head_body(head)))
    return head


def verify_head(head: Mapping, cert, root_ca=None, name: str | None = None, where: str = "tree head") -> None:
    """Check a signed tree head: its certificate is the signer's (under ``root_ca`` if given) and
    the signature verifies.

    Args:
        head: the signed head.
        cert: the certificate to check it against (path, PEM or loaded).
        root_ca: the project's root CA; defaults to ``None`` (issuer not checked).
        name: the expected signer; defaults to ``head["signer"]``.
        where: what to name in errors.

    Raises:
        SignatureError: naming ``where``.
    """
    missing = [f for f in HEAD_FIELDS + ("sig_alg", "signature", "cert_sha256") if f not in head]
    if missing:
        raise SignatureError(f"{where}: lacks {', '.join(missing)}")
    signer = name or head["signer"]
    if head["signer"] != signer:
        raise SignatureError(f"{where}: signed by {head['signer']!r}, expected {signer!r}")
    cert = check_certificate(cert, signer, root_ca, at=head["timestamp"], where=where)
    if cert_sha256(cert) != head["cert_sha256"]:
        raise SignatureError(f"{where}: signed with certificate {head['cert_sha256'][:16]}..., not {signer!r}'s {cert_sha256(cert)[:16]}...")
    verify_signature(cert, canonical_bytes(head_body(head)), head["sig_alg"], head["signature"], where)


def certs_from_kits(kits_dir) -> dict[str, x509.Certificate]:
    """The participants' certificates of a provisioned project, by common name.

    Reads every ``*/startup/server.crt`` and ``*/startup/client.crt`` under ``kits_dir`` (e.g.
    ``<workspace>/<project>/prod_00``, or a folder holding only certificates laid out the same way).

    Raises:
        SignatureError: naming ``kits_dir`` when it holds no certificate.
    """
    root = Path(kits_dir)
    found = {}
    for path in sorted(root.glob("*/startup/*.crt")):
        if path.name in ("server.crt", "client.crt"):
            cert = load_certificate(path)
            found[common_name(cert)] = cert
    if not found:
        raise SignatureError(f"{root}: no */startup/server.crt or client.crt (not a folder of startup kits)")
    return found


def root_ca_from_kits(kits_dir) -> x509.Certificate:
    """The project's root CA: the ``rootCA.pem`` of the kits under ``kits_dir`` (all must be equal).

    Raises:
        SignatureError: naming the folder when there is none, or two that differ.
    """
    paths = sorted(Path(kits_dir).glob("*/startup/rootCA.pem"))
    if not paths:
        raise SignatureError(f"{kits_dir}: no */startup/rootCA.pem")
    certs = {cert_sha256(load_certificate(p)): p for p in paths}
    if len(certs) > 1:
        raise SignatureError(f"{kits_dir}: the kits hold {len(certs)} different rootCA.pem ({', '.join(map(str, certs.values()))})")
    return load_certificate(paths[0])
