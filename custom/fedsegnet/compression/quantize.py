"""Quantization of a 1-D float vector to 8 or 4 bits with per-block (or per-tensor) absmax scales.

Symmetric linear quantization as in QSGD-style compressed communication (Alistarh et al., NeurIPS
2017): each block of ``block`` consecutive values has one float32 scale ``s = max|v| / q`` with
``q = 2**(bits-1) - 1`` (127 for 8 bits, 7 for 4 bits) and each value becomes the integer
``round(v / s)`` in ``[-q, q]``, stored with an offset of ``q`` as an unsigned code; 4-bit codes
are packed two per byte. With round-to-nearest the error is at most ``s / 2`` per value; with
stochastic rounding (``floor(v / s + u)``, ``u ~ U[0, 1)``) it is below ``s`` and unbiased.
``bits`` of 16 or 32 keep floats (``float16`` / ``float32``) with no scales.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsegnet.compression.index_coding import PayloadError

QUANT_BITS = (4, 8, 16, 32)


def check_bits(bits) -> int:
    """``bits`` as an int, or ValueError naming the valid values."""
    if isinstance(bits, bool) or bits not in QUANT_BITS:
        raise ValueError(f"bits={bits!r}: unsupported (valid: {', '.join(map(str, QUANT_BITS))})")
    return int(bits)


def _nblocks(count: int, block: int) -> int:
    if count == 0:
        return 0
    return 1 if block <= 0 else -(-count // block)


def quantize(
    values: torch.Tensor,
    bits: int = 8,
    block: int = 256,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a 1-D float tensor.

    Args:
        values: 1-D float tensor (any float dtype; read, never modified).
        bits: 4, 8 (integer codes with scales), 16 or 32 (floats, no scales). Defaults to 8.
        block: values per scale; 0 = one scale for the whole vector. Defaults to 256.
        stochastic: stochastic rounding (unbiased) instead of round-to-nearest. Defaults to False.
        generator: random source for stochastic rounding. Defaults to None (torch's global one).

    Returns:
        ``(codes, scales)``: ``codes`` is ``uint8`` (``ceil(n/2)`` bytes for 4 bits, ``n`` for 8),
        ``float16`` or ``float32`` (n values); ``scales`` is ``float32`` with one value per block
        (empty for 16/32 bits).
    """
    bits = check_bits(bits)
    v = values.detach().reshape(-1).to(torch.float32)
    n = v.numel()
    if bits == 32:
        return v.numpy().copy(), np.zeros(0, np.float32)
    if bits == 16:
        return v.to(torch.float16).numpy(), np.zeros(0, np.float32)
    q = float(2 ** (bits - 1) - 1)
    nb = _nblocks(n, block)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    # numpy, one thread: the same IEEE float32 arithmetic as torch's kernels (so the same codes),
    # with fewer passes and no thread barrier per operation
    size = n if block <= 0 else block
    x = v.cpu().numpy()
    if nb * size != n:
        padded = np.zeros(nb * size, np.float32)
        padded[:n] = x
        x = padded
    vp = x.reshape(nb, size)
    scales = np.maximum(vp.max(axis=1), -vp.min(axis=1))  # max |v| per block, no |v| copy
    scales /= np.float32(q)
    np.abs(scales, out=scales)  # -0.0 (a block of negative zeros) as +0.0, as torch's abs().amax()
    safe = np.where(scales > 0, scales, np.float32(1))
    x = vp / safe[:, None]
    if stochastic:
        x += torch.rand(x.shape, generator=generator, dtype=torch.float32).numpy()
        np.floor(x, out=x)
    else:
        np.rint(x, out=x)  # round half to even, as torch.round
    np.clip(x, -q, q, out=x)
    x += np.float32(q)
    with np.errstate(invalid="ignore"):  # NaN in the update: its block's scale is NaN, the decoder refuses it
        codes = x.reshape(-1)[:n].astype(np.uint8)
    if bits == 4:
        if n % 2:
            codes = np.concatenate([codes, np.zeros(1, np.uint8)])
        codes = codes[0::2] | (codes[1::2] << 4)
    return np.ascontiguousarray(codes), scales


def dequantize(codes, scales, count: int, bits: int = 8, block: int = 256, name: str = "tensor") -> torch.Tensor:
    """Inverse of :func:`quantize`, checking sizes and finiteness.

    Args:
        codes: what :func:`quantize` returned first.
        scales: what :func:`quantize` returned second.
        count: number of values.
        bits: as given to :func:`quantize`. Defaults to 8.
        block: as given to :func:`quantize`. Defaults to 256.
        name: tensor name for error messages. Defaults to ``"tensor"``.

    Returns:
        1-D ``float32`` tensor of ``count`` values, every one finite.

    Raises:
        PayloadError: unknown ``bits``, wrong array types or lengths, non-finite values or scales,
            codes outside ``[0, 2q]``, or a code times its scale overflowing float32 (a finite but
            huge scale).
    """
    if isinstance(bits, bool) or bits not in QUANT_BITS:
        raise PayloadError(f"{name}: unknown value bits {bits!r} (valid: {', '.join(map(str, QUANT_BITS))})")
    if not isinstance(codes, np.ndarray) or codes.ndim != 1:
        raise PayloadError(f"{name}: values must be a 1-D array, got {type(codes).__name__}")
    if bits in (16, 32):
        want = np.float16 if bits == 16 else np.float32
        if codes.dtype != want or codes.size != count:
            raise PayloadError(
                f"{name}: expected {count} {np.dtype(want).name} values, got {codes.size} {codes.dtype.name}"
            )
        out = codes.astype(np.float32)
        if not _all_finite(out):
            raise PayloadError(f"{name}: values contain NaN or Inf")
        return torch.from_numpy(out)
    need = count if bits == 8 else (count + 1) // 2
    if codes.dtype != np.uint8 or codes.size != need:
        raise PayloadError(f"{name}: expected {need} uint8 bytes of {bits}-bit codes, got {codes.size} {codes.dtype.name}")
    nb = _nblocks(count, block)
    if not isinstance(scales, np.ndarray) or scales.dtype != np.float32 or scales.shape != (nb,):
        got = f"{scales.dtype.name} {scales.shape}" if isinstance(scales, np.ndarray) else type(scales).__name__
        raise PayloadError(f"{name}: expected {nb} float32 scales, got {got}")
    if not np.isfinite(scales).all():
        raise PayloadError(f"{name}: scales contain NaN or Inf")
    q = 2 ** (bits - 1) - 1
    if bits == 4:
        c = np.empty(need * 2, np.uint8)
        c[0::2] = codes & 0x0F
        c[1::2] = codes >> 4
        codes = c[:count]
    if count and int(codes.max()) > 2 * q:
        raise PayloadError(f"{name}: {bits}-bit code {int(codes.max())} out of range [0, {2 * q}]")
    x = codes.astype(np.float32)
    x -= q
    if count == 0:
        return torch.from_numpy(x)
    with np.errstate(over="ignore"):
        if nb == 1:  # one scale: never expand it to ``block`` values (a payload may declare any block)
            x *= scales[0]
        else:  # nb > 1 means block < count: the expansion holds fewer than 2 * count values
            x *= np.repeat(scales, block)[:count]
    if not _all_finite(x):
        raise PayloadError(f"{name}: {bits}-bit codes times scales overflow float32 (largest scale {float(np.abs(scales).max()):.3g})")
    return torch.from_numpy(x)


def _all_finite(x: np.ndarray) -> bool:
    """True when every value of the float array ``x`` is finite (NaN propagates through min/max; no copy)."""
    return x.size == 0 or bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def as_declared(values: np.ndarray, dtype: str, name: str, as_numpy: bool):
    """Decoded values cast to the dtype a payload declares for their tensor.

    Args:
        values: finite ``float32`` array.
        dtype: ``float32``, ``float64``, ``float16`` or ``bfloat16``.
        name: tensor name for error messages.
        as_numpy: return a numpy array (else a tensor; bfloat16 is always a tensor).

    Returns:
        The cast array or tensor (no copy when ``values`` already has ``dtype``).

    Raises:
        PayloadError: the cast overflows to Inf (the message names the tensor ``name``).
    """
    if dtype in ("float32", "float64"):  # no overflow: the values were checked finite where they were decoded
        t = values.astype(dtype, copy=False)
        return t if as_numpy else torch.from_numpy(t)
    if dtype == "bfloat16":  # numpy has no bfloat16
        t = torch.from_numpy(values).to(torch.bfloat16)
        finite = bool(torch.isfinite(t).all())
    else:
        with np.errstate(over="ignore"):
            t = values.astype(dtype, copy=False)
        finite = t.size == 0 or bool(np.isfinite(t.min()) and np.isfinite(t.max()))
        if not as_numpy:
            t = torch.from_numpy(t)
    if not finite:
        raise PayloadError(f"{name}: decoded values overflow to Inf as {dtype} (the declared dtype)")
    return t
