"""Shamir secret sharing over the prime field GF(2^127 - 1).

A secret of ``length`` bytes is cut into 15-byte chunks (each an integer below ``2^120 < p``); every
chunk is the constant term of its own random polynomial of degree ``t - 1`` and party ``x`` (``1..n``)
gets the polynomial values at ``x`` (Shamir, "How to share a secret", CACM 1979; the dropout
recovery of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017, section 4). Any ``t`` shares give the secret back by Lagrange interpolation at 0; any
``t - 1`` shares are consistent with every secret (for each candidate there is exactly one
polynomial through it and the ``t - 1`` points), so they tell nothing about it.

A :class:`Share` carries ``t`` and the secret's length, so :func:`reconstruct` needs nothing else and
checks that the shares agree with each other: shares beyond ``t`` must lie on the interpolated
polynomial, else :class:`~fedsegnet.secagg.errors.ShareError` (a corrupted or foreign share).

Wire form (:meth:`Share.to_bytes`): ``t``, ``x``, ``length`` as big-endian uint16, then one
16-byte big-endian field element per chunk: 6 + 16 * ceil(length / 15) bytes (54 for a 32-byte seed).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fedsegnet.secagg.errors import ShareError

PRIME = 2**127 - 1
"""The field's modulus, a Mersenne prime."""
CHUNK_BYTES = 15
"""Bytes of the secret per field element (``2^120 < PRIME``)."""
ELEMENT_BYTES = 16
MAX_PARTIES = 2**16 - 1


@dataclass(frozen=True)
class Share:
    """Party ``x``'s share of a secret of ``length`` bytes with threshold ``t``.

    Args:
        x: the party's evaluation point, 1..65535 (0 is the secret).
        ys: one field element per 15-byte chunk of the secret.
        t: shares needed to reconstruct.
        length: the secret's length in bytes.
    """

    x: int
    ys: tuple[int, ...]
    t: int
    length: int

    def to_bytes(self) -> bytes:
        """The wire form: ``t, x, length`` (uint16 each) then the elements (16 bytes each)."""
        head = self.t.to_bytes(2, "big") + self.x.to_bytes(2, "big") + self.length.to_bytes(2, "big")
        return head + b"".join(y.to_bytes(ELEMENT_BYTES, "big") for y in self.ys)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "share") -> Share:
        """Parse :meth:`to_bytes`.

        Args:
            data: the wire form.
            what: names the share in errors. Defaults to ``"share"``.

        Raises:
            ShareError: the bytes are not a well-formed share (naming ``what``).
        """
        if not isinstance(data, (bytes, bytearray)) or len(data) < 6:
            raise ShareError(f"{what}: not a share (need at least 6 bytes, got {type(data).__name__})")
        t, x, length = (int.from_bytes(data[i : i + 2], "big") for i in (0, 2, 4))
        n_chunks = _n_chunks(length)
        if len(data) != 6 + ELEMENT_BYTES * n_chunks:
            raise ShareError(f"{what}: {len(data)} bytes, expected {6 + ELEMENT_BYTES * n_chunks} for a {length}-byte secret")
        ys = tuple(int.from_bytes(data[6 + i * ELEMENT_BYTES : 6 + (i + 1) * ELEMENT_BYTES], "big") for i in range(n_chunks))
        share = cls(x=x, ys=ys, t=t, length=length)
        _check_share(share, what)
        return share


def _n_chunks(length: int) -> int:
    return max(1, -(-length // CHUNK_BYTES))


def _check_share(share: Share, what: str) -> None:
    if not 1 <= share.t <= MAX_PARTIES:
        raise ShareError(f"{what}: threshold t={share.t} out of range 1..{MAX_PARTIES}")
    if not 1 <= share.x <= MAX_PARTIES:
        raise ShareError(f"{what}: x={share.x} out of range 1..{MAX_PARTIES}")
    if len(share.ys) != _n_chunks(share.length):
        raise ShareError(f"{what}: {len(share.ys)} elements for a {share.length}-byte secret")
    if not all(isinstance(y, int) and 0 <= y < PRIME for y in share.ys):
        raise ShareError(f"{what}: an element is not in the field GF(2^127 - 1)")


def _chunks(secret: bytes) -> list[int]:
    if not secret:
        return [0]
    return [int.from_bytes(secret[i : i + CHUNK_BYTES], "big") for i in range(0, len(secret), CHUNK_BYTES)]


def _unchunk(values: Sequence[int], length: int) -> bytes:
    out = b""
    for i, v in enumerate(values):
        size = min(CHUNK_BYTES, length - i * CHUNK_BYTES)
        if size <= 0:
            break
        if v >= 256**size:
            raise ShareError(f"reconstructed chunk {i} does not fit {size} bytes: the shares are not of one secret")
        out += v.to_bytes(size, "big")
    return out


def share(
    secret: bytes,
    n: int,
    t: int,
    randbelow: Callable[[int], int] | None = None,
) -> list[Share]:
    """Split ``secret`` into ``n`` shares, any ``t`` of which reconstruct it.

    Args:
        secret: the bytes to share (a 32-byte seed or private key), at most 65535 bytes.
        n: number of parties; party ``i`` (1-based) gets share ``x = i``.
        t: the threshold, ``1 <= t <= n``.
        randbelow: source of the polynomials' coefficients, ``randbelow(k)`` uniform in ``[0, k)``.
            Defaults to None (``secrets.randbelow``, the operating system's CSPRNG); pass another only
            in tests.

    Returns:
        ``n`` shares, the i-th with ``x = i + 1``.

    Raises:
        ShareError: ``secret`` is not bytes, or ``n``/``t`` are out of range (naming them).
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) > MAX_PARTIES:
        raise ShareError(f"secret: must be bytes of at most {MAX_PARTIES} bytes, got {type(secret).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARTIES:
        raise ShareError(f"n={n!r}: must be an integer in 1..{MAX_PARTIES}")
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= n:
        raise ShareError(f"t={t!r}: must be an integer in 1..n={n}")
    rand = randbelow or secrets.randbelow
    polys = [[c] + [rand(PRIME) for _ in range(t - 1)] for c in _chunks(bytes(secret))]
    return [Share(x=x, ys=tuple(_evaluate(p, x) for p in polys), t=t, length=len(secret)) for x in range(1, n + 1)]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def interpolate(points: Sequence[tuple[int, int]], x: int = 0) -> int:
    """The value at ``x`` of the unique polynomial of degree ``< len(points)`` through ``points``.

    Args:
        points: ``(x_i, y_i)`` with distinct ``x_i`` (mod :data:`PRIME`).
        x: where to evaluate. Defaults to 0 (the secret).

    Returns:
        The field element.

    Raises:
        ShareError: two points share an x.
    """
    xs = [px % PRIME for px, _ in points]
    if len(set(xs)) != len(xs):
        raise ShareError(f"duplicate x among {sorted(xs)}")
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Iterable[Share], parties: Iterable[int] | None = None) -> bytes:
    """The secret from at least ``t`` shares.

    Args:
        shares: shares of one secret (same ``t`` and length, distinct ``x``).
        parties: the ``x`` values that may hold a share; a share from another is refused. Defaults to
            None (any ``x``).

    Returns:
        The secret bytes.

    Raises:
        ShareError: fewer than ``t`` shares; a duplicate ``x`` (naming it, and whether the copies
            differ); shares of different ``t`` or length; a share from an ``x`` not in ``parties``;
            shares beyond ``t`` that do not lie on the same polynomial (inconsistent).
    """
    shares = list(shares)
    if not shares:
        raise ShareError("no shares to reconstruct from")
    for s in shares:
        if not isinstance(s, Share):
            raise ShareError(f"not a Share: {type(s).__name__}")
        _check_share(s, f"share x={s.x}")
    t, length = shares[0].t, shares[0].length
    for s in shares:
        if (s.t, s.length) != (t, length):
            raise ShareError(f"share x={s.x} has t={s.t}, length={s.length}; the first has t={t}, length={length}")
    allowed = None if parties is None else set(parties)
    seen: dict[int, Share] = {}
    for s in shares:
        if allowed is not None and s.x not in allowed:
            raise ShareError(f"share x={s.x} is from an unknown party (parties: {sorted(allowed)})")
        if s.x in seen:
            same = seen[s.x].ys == s.ys
            raise ShareError(f"duplicate x={s.x} ({'identical copies' if same else 'inconsistent: the copies differ'})")
        seen[s.x] = s
    if len(shares) < t:
        raise ShareError(f"{len(shares)} share(s), need t={t}")
    base, extra = shares[:t], shares[t:]
    values = []
    for c in range(len(base[0].ys)):
        points = [(s.x, s.ys[c]) for s in base]
        for s in extra:
            if interpolate(points, s.x) != s.ys[c]:
                raise ShareError(f"share x={s.x} is inconsistent with the others (not on their polynomial)")
        values.append(interpolate(points, 0))
    return _unchunk(values, length)
