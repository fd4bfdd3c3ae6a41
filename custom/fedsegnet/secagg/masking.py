"""Masks in the ring ``Z_{2^bits}``: a keyed PRG, pairwise masks that cancel in the sum, the self mask.

The PRG is the ChaCha20 keystream (``cryptography``) under a 32-byte seed with a zero nonce, read as
little-endian uint32 (:func:`expand`): deterministic, the same on every machine, and each seed is
used for one vector only (pairwise seeds are bound to the round by their key derivation, self-mask
seeds are fresh per round). Masked input of site ``u`` over the round's sharing set ``U2``
(Bonawitz et al., CCS 2017, section 4, double masking)::

    y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} sign(u, v) * PRG(s_uv)   (mod 2^bits)

with ``sign(u, v) = +1`` when ``u < v`` (site names in sorted order) and ``-1`` otherwise, so each
pair's masks cancel in ``sum_u y_u``. ``bits <= 32`` and all arithmetic is uint32 (wrapping mod
``2^32``) reduced mod ``2^bits``: since ``2^bits`` divides ``2^32`` the reduction commutes with sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedsegnet.secagg.errors import SecAggError

SEED_BYTES = 32
MAX_RING_BITS = 32
_ZERO_NONCE = bytes(16)


def ring_mask(bits: int) -> np.uint32:
    """``2^bits - 1`` as uint32 (the reduction mod ``2^bits``)."""
    return np.uint32((1 << bits) - 1)


def check_ring_bits(bits, field: str = "ring_bits") -> int:
    """``bits`` when it is an integer in 2..32, else :class:`SecAggError` naming ``field``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= MAX_RING_BITS:
        raise SecAggError(f"{field}={bits!r}: must be an integer in 2..{MAX_RING_BITS}")
    return bits


def expand(seed: bytes, length: int, bits: int = 32) -> np.ndarray:
    """The PRG: ``length`` ring elements from a 32-byte seed.

    Args:
        seed: 32 bytes.
        length: number of elements (>= 0).
        bits: the ring ``Z_{2^bits}``. Defaults to 32.

    Returns:
        uint32 array of shape ``(length,)``, every element below ``2^bits``.

    Raises:
        SecAggError: a seed that is not 32 bytes, a negative length, bits out of 2..32.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise SecAggError(f"seed: must be {SEED_BYTES} bytes")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise SecAggError(f"length={length!r}: must be an integer >= 0")
    check_ring_bits(bits)
    stream = Cipher(algorithms.ChaCha20(bytes(seed), _ZERO_NONCE), mode=None).encryptor()
    out = np.frombuffer(stream.update(bytes(4 * int(length))), dtype="<u4").astype(np.uint32, copy=True)
    if bits < 32:
        out &= ring_mask(bits)
    return out


def pair_sign(own_site: str, peer_site: str) -> int:
    """``+1`` when ``own_site`` sorts before ``peer_site``, ``-1`` after (never equal)."""
    if own_site == peer_site:
        raise SecAggError(f"a site has no pairwise mask with itself ({own_site!r})")
    return 1 if own_site < peer_site else -1


def add_mask(acc: np.ndarray, mask: np.ndarray, sign: int, bits: int) -> np.ndarray:
    """``acc + sign * mask`` mod ``2^bits`` in place on ``acc`` (uint32); returns ``acc``."""
    if sign > 0:
        acc += mask
    else:
        acc -= mask
    if bits < 32:
        acc &= ring_mask(bits)
    return acc


def mask_input(
    values: np.ndarray,
    self_seed: bytes,
    pair_seeds: Mapping[str, bytes],
    own_site: str,
    bits: int,
) -> np.ndarray:
    """``y_u``: ``values`` plus the self mask plus the signed pairwise masks, mod ``2^bits``.

    Args:
        values: uint32 ring elements of shape ``(m,)``, each below ``2^bits``; not modified.
        self_seed: ``b_u`` (32 bytes).
        pair_seeds: ``{peer site: s_uv}`` for every other site of the sharing set.
        own_site: this site's name (orders the signs).
        bits: ring bits.

    Returns:
        uint32 array of shape ``(m,)``.

    Raises:
        SecAggError: values not a 1-D uint32 array or with an element ``>= 2^bits``.
    """
    values = check_ring_vector(values, bits, "values")
    acc = values.copy()
    add_mask(acc, expand(self_seed, acc.size, bits), +1, bits)
    for peer in sorted(pair_seeds):
        add_mask(acc, expand(pair_seeds[peer], acc.size, bits), pair_sign(own_site, peer), bits)
    return acc


def check_ring_vector(values, bits: int, field: str, length: int | None = None) -> np.ndarray:
    """``values`` as a 1-D uint32 array of ring elements (no copy when it already is one).

    Raises:
        SecAggError: naming ``field``: not 1-D uint32, wrong length, or an element ``>= 2^bits``.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.uint32 or values.ndim != 1:
        got = f"{type(values).__name__} {getattr(values, 'dtype', '')} {getattr(values, 'shape', '')}"
        raise SecAggError(f"{field}: must be a 1-D uint32 array of ring elements, got {got}")
    if length is not None and values.size != length:
        raise SecAggError(f"{field}: {values.size} elements, the round's support has {length}")
    if bits < 32 and values.size and int(values.max()) > int(ring_mask(bits)):
        raise SecAggError(f"{field}: an element is >= 2^{bits} (not in the ring)")
    return values


def ring_sum(vectors: Iterable[np.ndarray], length: int, bits: int) -> np.ndarray:
    """The sum of ring vectors mod ``2^bits`` (uint32, shape ``(length,)``)."""
    acc = np.zeros(length, dtype=np.uint32)
    for v in vectors:
        add_mask(acc, v, +1, bits)
    return acc


def pack(values: np.ndarray, bits: int) -> bytes:
    """``values`` (uint32 below ``2^bits``) as ``ceil(len * bits / 8)`` bytes, little-endian bit order."""
    values = check_ring_vector(values, bits, "values")
    if bits == 32:
        return values.astype("<u4").tobytes()
    as_bits = np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    return np.packbits(as_bits[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, length: int, bits: int, field: str = "masked input") -> np.ndarray:
    """Inverse of :func:`pack`.

    Raises:
        SecAggError: naming ``field`` when ``data`` has not exactly ``ceil(length * bits / 8)`` bytes.
    """
    expected = -(-length * bits // 8)
    if not isinstance(data, (bytes, bytearray)) or len(data) != expected:
        got = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise SecAggError(f"{field}: {got} bytes, expected {expected} ({length} elements x {bits} bits)")
    if bits == 32:
        return np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
    flat = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8), bitorder="little")[: length * bits]
    full = np.zeros((length, 32), dtype=np.uint8)
    full[:, :bits] = flat.reshape(length, bits)
    return np.packbits(full, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.uint32)
