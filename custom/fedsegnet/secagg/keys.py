"""Key agreement and authenticated encryption between two sites of a round.

Each site makes two X25519 key pairs per round (Bonawitz et al., CCS 2017, section 4): ``c`` to
encrypt the Shamir shares it sends the others through the server, ``s`` to agree the pairwise mask
seeds. A pairwise secret is ``HKDF-SHA256(X25519(own private, peer public))`` with ``info`` binding
the purpose, the round and both site names in sorted order (so the two sites derive the same 32
bytes and no other round, pair or purpose does). Shares travel sealed with ChaCha20-Poly1305 under
the ``c`` secret, with the sender, receiver and round as associated data: a ciphertext moved to
another receiver or round, or changed in one bit, fails to open
(:class:`~fedsegnet.secagg.errors.DecryptionError`).

Public keys are the 32 raw bytes of RFC 7748. Nothing here signs them: :mod:`fedsegnet.secagg.adverts`
signs each site's pair with its startup-kit key, without which a malicious server can substitute
keys (docs/secure_aggregation.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsegnet.secagg.errors import DecryptionError, SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PURPOSES = ("c", "s")
"""``c``: the key that encrypts shares; ``s``: the key that seeds pairwise masks."""
_INFO = b"fedsegnet.secagg.v1"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw bytes (private 32, public 32)."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh pair from the operating system's CSPRNG."""
        return cls.from_private(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """The pair of a raw 32-byte private key (e.g. one reconstructed from shares).

        Raises:
            SecAggError: ``private`` is not 32 bytes.
        """
        if not isinstance(private, (bytes, bytearray)) or len(private) != KEY_BYTES:
            raise SecAggError(f"private key: must be {KEY_BYTES} bytes")
        key = X25519PrivateKey.from_private_bytes(bytes(private))
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private=bytes(private), public=public)


def check_public_key(public: bytes, site: str, round: int, purpose: str) -> bytes:
    """``public`` when it is a usable 32-byte X25519 public key.

    Raises:
        SecAggError: naming the site, round and key (``c`` or ``s``) when it is not.
    """
    if not isinstance(public, (bytes, bytearray)) or len(public) != KEY_BYTES:
        raise SecAggError(f"{purpose}-public key: must be {KEY_BYTES} raw bytes", round, site)
    if bytes(public) == bytes(KEY_BYTES):
        raise SecAggError(f"{purpose}-public key: all zero (a low-order point)", round, site)
    return bytes(public)


def agree(own_private: bytes, peer_public: bytes, round: int, own_site: str, peer_site: str, purpose: str) -> bytes:
    """The 32-byte secret two sites share for ``purpose`` in ``round``.

    Args:
        own_private: this site's raw private key of ``purpose``.
        peer_public: the peer's raw public key of ``purpose``.
        round: the round number (bound into the derivation).
        own_site: this site's name.
        peer_site: the peer's name (must differ from ``own_site``).
        purpose: ``"c"`` (share encryption) or ``"s"`` (mask seed).

    Returns:
        32 bytes, the same at both sites.

    Raises:
        SecAggError: bad purpose, equal names, or a low-order peer key (X25519 output all zero).
    """
    if purpose not in PURPOSES:
        raise SecAggError(f"purpose={purpose!r}: must be one of {PURPOSES}", round, own_site)
    if own_site == peer_site:
        raise SecAggError(f"cannot agree a key with itself ({own_site!r})", round, own_site)
    peer = X25519PublicKey.from_public_bytes(check_public_key(peer_public, peer_site, round, purpose))
    try:
        shared = X25519PrivateKey.from_private_bytes(bytes(own_private)).exchange(peer)
    except ValueError as e:  # cryptography refuses an all-zero shared secret
        raise SecAggError(f"key agreement with {peer_site!r} failed: {e}", round, own_site) from e
    a, b = sorted((own_site, peer_site))
    info = b"|".join((_INFO, purpose.encode(), str(int(round)).encode(), _name(a), _name(b)))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _name(site: str) -> bytes:
    raw = site.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw  # length-prefixed: no two name pairs give the same info


def associated_data(sender: str, receiver: str, round: int) -> bytes:
    """What a sealed share is bound to: sender, receiver (in that order) and round."""
    return b"|".join((_INFO, b"share", str(int(round)).encode(), _name(sender), _name(receiver)))


def seal(key: bytes, plaintext: bytes, sender: str, receiver: str, round: int, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate ``plaintext`` from ``sender`` to ``receiver`` in ``round``.

    Args:
        key: the pair's 32-byte ``c`` secret (:func:`agree`).
        plaintext: the bytes to seal.
        sender: the sending site.
        receiver: the receiving site.
        round: the round.
        nonce: 12 bytes; defaults to None (random; each key is used for one message per direction).

    Returns:
        ``nonce + ciphertext + tag`` (``len(plaintext) + 28`` bytes).
    """
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data(sender, receiver, round))


def open_sealed(key: bytes, sealed: bytes, sender: str, receiver: str, round: int) -> bytes:
    """The plaintext of :func:`seal`'s output.

    Raises:
        DecryptionError: naming sender, receiver and round, when the bytes were changed, are bound to
            another sender/receiver/round, or the key is wrong.
    """
    if not isinstance(sealed, (bytes, bytearray)) or len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"share from {sender!r} to {receiver!r}: too short to be sealed", round, receiver)
    try:
        return ChaCha20Poly1305(key).decrypt(
            bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), associated_data(sender, receiver, round)
        )
    except InvalidTag as e:
        raise DecryptionError(
            f"share from {sender!r} to {receiver!r} failed authentication (tampered, misrouted or replayed)",
            round, receiver,
        ) from e  # fmt: skip
