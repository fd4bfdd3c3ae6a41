"""Signed key adverts: a site's two X25519 public keys of a round, signed with its startup-kit key.

Without signatures a malicious server can put its own public keys in the roster for every site but
the receiver (each site checks only its own) and so open every sealed share (Bonawitz et al., CCS
2017, section 4: the malicious model signs the adverts with each party's long-term key). Here the
long-term key is the site's FLARE startup-kit key pair and the root of trust the project's root CA,
loaded and checked by :mod:`fedsegnet.ledger.signing` as for the ledger's tree heads.

What is signed: the canonical bytes (:func:`~fedsegnet.ledger.canonical.canonical_bytes`) of

    {"type": "fedsegnet.secagg.key_advert.v1", "site", "round", "session", "c_public", "s_public"}

(public keys as lowercase hex; ``session`` is the FLARE job id), so that a signature is valid for
one site, one round of one job and these two keys only: an advert replayed from another round or
job, or with one key changed, does not verify. The signature record that travels with the advert::

    {"round", "session", "sig_alg", "signature" (bytes), "key_source", "cert_sha256", "cert" (PEM, or "")}

``round`` and ``session`` repeat what was signed so that a replay is refused with a plain reason;
the check itself verifies the signature over the *checker's* round and session, never the
record's. ``cert`` may be left out (``""``) when the receivers already know the signer's
certificate (sent once per job): the fingerprint ``cert_sha256`` then picks it.

A checked advert gets one of three labels (:data:`KEYS_KIT`, :data:`KEYS_UNCHECKED`,
:data:`KEYS_UNSIGNED`) that says what the check proved: only :data:`KEYS_KIT` (signed, the
certificate issued by the given root CA) stops a server that substitutes keys.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Mapping

from cryptography import x509

from fedsegnet.ledger.canonical import canonical_bytes
from fedsegnet.ledger.errors import SignatureError
from fedsegnet.ledger.signing import Signer, cert_sha256, check_certificate, load_certificate, verify_signature
from fedsegnet.secagg.errors import AdvertError

__all__ = [
    "ADVERT_TYPE",
    "KEYS_KIT",
    "KEYS_UNCHECKED",
    "KEYS_UNSIGNED",
    "RECORD_FIELDS",
    "advert_body",
    "sign_advert",
    "check_advert",
    "weakest",
]

ADVERT_TYPE = "fedsegnet.secagg.key_advert.v1"
RECORD_FIELDS = ("round", "session", "sig_alg", "signature", "key_source", "cert_sha256", "cert")

KEYS_KIT = "kit"
"""Signed, and the signer's certificate was issued by the project's root CA for that site's name."""
KEYS_UNCHECKED = "signed, no root CA"
"""Signed with the certificate that came with it, but no root CA checked it (generated keys, the
simulator): it shows the advert was not changed after signing, not who signed it."""
KEYS_UNSIGNED = "unsigned"
"""No signature: a malicious server could have put its own keys in its place."""
_STRENGTH = {KEYS_UNSIGNED: 0, KEYS_UNCHECKED: 1, KEYS_KIT: 2}


def weakest(labels) -> str:
    """The weakest of some :data:`KEYS_KIT` / :data:`KEYS_UNCHECKED` / :data:`KEYS_UNSIGNED` labels
    (:data:`KEYS_UNSIGNED` for none)."""
    labels = list(labels)
    return min(labels, key=_STRENGTH.__getitem__) if labels else KEYS_UNSIGNED


def advert_body(site: str, round: int, session: str, c_public: bytes, s_public: bytes) -> dict:
    """What a site signs for its advert: the type tag, its name, the round, the session, both keys (hex)."""
    return {
        "type": ADVERT_TYPE,
        "site": site,
        "round": int(round),
        "session": session,
        "c_public": bytes(c_public).hex(),
        "s_public": bytes(s_public).hex(),
    }


def sign_advert(signer: Signer, round: int, session: str, c_public: bytes, s_public: bytes, send_cert: bool = True) -> dict:
    """The signature record of ``signer``'s advert of ``round`` in ``session``.

    Args:
        signer: the site's :class:`~fedsegnet.ledger.signing.Signer` (its kit key, or a generated one).
        round: the round.
        session: the job id.
        c_public: the share-encryption public key (32 bytes).
        s_public: the mask-seed public key (32 bytes).
        send_cert: put the certificate's PEM in the record. Defaults to True; False when the
            receivers hold it already (then only its fingerprint travels).

    Returns:
        ``{round, session, sig_alg, signature, key_source, cert_sha256, cert}`` (``signature`` raw bytes).
    """
    data = canonical_bytes(advert_body(signer.name, round, session, c_public, s_public))
    return {
        "round": int(round),
        "session": session,
        "sig_alg": signer.algorithm,
        "signature": base64.b64decode(signer.sign(data)),
        "key_source": signer.key_source,
        "cert_sha256": signer.cert_sha256,
        "cert": signer.cert_pem if send_cert else "",
    }


def check_advert(
    site: str,
    round: int,
    session: str,
    c_public: bytes,
    s_public: bytes,
    record,
    *,
    root_ca=None,
    certs: Mapping | None = None,
    require_signed: bool = False,
    at: _dt.datetime | None = None,
    by: str | None = None,
) -> tuple[str, x509.Certificate | None]:
    """Check that ``site``'s keys of ``round`` in ``session`` were signed by ``site``.

    Args:
        site: the advertising site.
        round: the checker's round (what the signature must cover).
        session: the checker's session (the job id).
        c_public: the advertised share-encryption key.
        s_public: the advertised mask-seed key.
        record: the signature record from :func:`sign_advert`; ``None`` or ``{}`` when unsigned.
        root_ca: the project's root CA (path, PEM or loaded); the certificate must be issued by it.
            Defaults to None: the issuer is not checked and the label is at best :data:`KEYS_UNCHECKED`.
        certs: certificates the checker already knows, ``{site: certificate}`` (from an earlier
            round or distributed once per job). A record without ``cert`` is checked against
            ``certs[site]``; a record whose certificate differs from the known one is refused.
            Defaults to None.
        require_signed: refuse an unsigned advert. Defaults to False.
        at: when to check the certificates' validity dates. Defaults to now.
        by: the checking site, named in errors. Defaults to None (the server).

    Returns:
        ``(label, certificate)``: :data:`KEYS_KIT`, :data:`KEYS_UNCHECKED` or :data:`KEYS_UNSIGNED`,
        and the signer's certificate (None when unsigned).

    Raises:
        AdvertError: naming ``round``, ``by`` and ``site`` (as ``advertiser``) and the problem: unsigned
            under ``require_signed``, a malformed record, another round or session, a certificate of
            another site, not issued by ``root_ca`` or out of its validity dates, another certificate
            than the known one, a signature that does not verify.
    """

    def refuse(problem: str):
        raise AdvertError(f"the key advert of {site!r} {problem}", round, by, advertiser=site)

    if record is None or (isinstance(record, Mapping) and not record):
        if require_signed:
            refuse("is not signed, and this round requires signed adverts")
        return KEYS_UNSIGNED, None
    if not isinstance(record, Mapping):
        refuse(f"has a signature record of type {type(record).__name__}, not a dict")
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        refuse(f"has a signature record without {missing}")
    types = {"round": int, "session": str, "sig_alg": str, "signature": (bytes, bytearray), "key_source": str,
             "cert_sha256": str, "cert": str}  # fmt: skip
    bad = [f for f, t in types.items() if not isinstance(record[f], t) or (f == "round" and isinstance(record[f], bool))]
    if bad:
        refuse(f"has a malformed signature record (fields {bad})")
    if record["round"] != round:
        refuse(f"was signed for round {record['round']}, not round {round} (a replayed advert)")
    if record["session"] != session:
        refuse(f"was signed for session {record['session']!r}, not {session!r} (an advert of another job)")
    known = (certs or {}).get(site)
    try:
        if record["cert"]:
            cert = load_certificate(record["cert"])
        elif known is not None:
            cert = load_certificate(known)
        else:
            refuse("carries no certificate and none is known for that site")
        if cert_sha256(cert) != record["cert_sha256"]:
            refuse(f"names certificate {record['cert_sha256'][:16]}... but carries {cert_sha256(cert)[:16]}...")
        if known is not None and cert_sha256(load_certificate(known)) != cert_sha256(cert):
            refuse(f"is signed with another certificate ({cert_sha256(cert)[:16]}...) than the one known for {site!r}")
        check_certificate(cert, site, root_ca, at=at, where="its signer")
        data = canonical_bytes(advert_body(site, round, session, c_public, s_public))
        verify_signature(cert, data, record["sig_alg"], base64.b64encode(bytes(record["signature"])).decode("ascii"), "its signature")
    except SignatureError as exc:
        refuse(f"is refused: {exc}")
    return (KEYS_KIT if root_ca is not None else KEYS_UNCHECKED), cert
