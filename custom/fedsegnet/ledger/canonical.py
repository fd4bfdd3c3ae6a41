"""Canonical bytes of ledger entries and deterministic hashes of files and weight dicts.

An entry is hashed as the exact bytes stored on its line of ``entries.jsonl``; those bytes are
the canonical encoding of the entry, so that the same entry always gives the same bytes, on any
machine and Python version:

- JSON (RFC 8259) with keys sorted, separators ``","`` and ``":"`` (no spaces), ASCII only
  (``\\uXXXX`` escapes), UTF-8 bytes, no trailing newline;
- values: ``None``, ``bool``, ``int``, finite ``float`` (Python's shortest round-trip ``repr``),
  ``str``, lists (tuples become lists) and dicts with string keys; numpy scalars become Python
  scalars. NaN, +-Inf, non-string keys and any other type are refused naming the field.

Weights hash as ``sha256`` over, for each name in sorted order: the name, the dtype string
(``numpy.dtype.str``, byte order included), the shape and the C-order bytes, each length-prefixed,
so that two dicts hash alike exactly when they have the same names, dtypes, shapes and values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping

import numpy as np

from fedsegnet.ledger.errors import CanonicalError

__all__ = ["canonical_bytes", "canonical_value", "parse_canonical", "sha256_file", "hash_weights", "sha256_hex"]

_CHUNK = 1 << 20


def canonical_value(value, field: str = ""):
    """``value`` as plain JSON types, checked: what :func:`canonical_bytes` encodes.

    Args:
        value: the value to check.
        field: dotted path of ``value`` in the entry, used in errors. Defaults to ``""``.

    Returns:
        A new value made of ``None``, bool, int, float, str, list and dict (inputs are not mutated).

    Raises:
        CanonicalError: naming the field of a NaN/Inf, a non-string key or an unsupported type.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        value = value.item()
        if value is None or isinstance(value, bool):
            return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(field, f"{value!r} is not a finite number; a ledger entry holds finite numbers only")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(field, f"key {key!r} is a {type(key).__name__}; keys must be strings")
            out[key] = canonical_value(item, f"{field}.{key}" if field else key)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical_value(item, f"{field}[{i}]") for i, item in enumerate(value)]
    raise CanonicalError(field, f"a {type(value).__name__} cannot go in a ledger entry (use str, number, list, dict)")


def canonical_bytes(value) -> bytes:
    """The canonical encoding of ``value`` (see the module docstring).

    Args:
        value: a JSON-like value (usually an entry dict).

    Returns:
        UTF-8 bytes of the canonical JSON, without a newline.

    Raises:
        CanonicalError: naming the field at fault.
    """
    return json.dumps(
        canonical_value(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def parse_canonical(data: bytes, where: str):
    """Parse one stored line and check it is canonical (re-encodes to the same bytes).

    Args:
        data: the line's bytes without its newline.
        where: what to name in errors, e.g. ``"entries.jsonl line 4"``.

    Returns:
        The parsed value.

    Raises:
        CanonicalError: when the bytes are not JSON or not in canonical form.
    """
    try:
        value = json.loads(data.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CanonicalError(where, f"not canonical JSON ({exc})") from None
    if canonical_bytes(value) != data:
        raise CanonicalError(where, "JSON is not in canonical form (sorted keys, no spaces, ASCII)")
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.

    Raises:
        LedgerError: naming the file when it cannot be read.
    """
    from fedsegnet.ledger.errors import LedgerError

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot be read to hash it ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _put(digest, data: bytes) -> None:
    digest.update(struct.pack(">Q", len(data)))
    digest.update(data)


def hash_weights(weights: Mapping) -> str:
    """Deterministic hex SHA-256 of a dict of arrays (names, dtypes, shapes and values).

    Args:
        weights: ``{name: numpy array | torch tensor | array-like}``; tensors are moved to CPU.

    Returns:
        64 lowercase hex digits; equal for equal dicts whatever their insertion order.

    Raises:
        CanonicalError: naming the entry whose key is not a string or whose value is not an array.
    """
    if not isinstance(weights, Mapping):
        raise CanonicalError("weights", f"must be a dict of arrays, got {type(weights).__name__}")
    digest = hashlib.sha256(b"fedsegnet.ledger.weights.v1")
    for name in sorted(weights, key=lambda k: (not isinstance(k, str), str(k))):
        if not isinstance(name, str):
            raise CanonicalError(f"weights[{name!r}]", "keys must be strings")
        value = weights[name]
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            value = value.detach().cpu().numpy()
        try:
            array = np.ascontiguousarray(np.asarray(value))
        except Exception as exc:  # noqa: BLE001 - any conversion failure names the entry
            raise CanonicalError(f"weights[{name!r}]", f"is not an array ({exc})") from None
        if array.dtype == object:
            raise CanonicalError(f"weights[{name!r}]", "has dtype object; only numeric arrays hash")
        _put(digest, name.encode("utf-8"))
        _put(digest, array.dtype.str.encode("ascii"))
        _put(digest, json.dumps(list(array.shape)).encode("ascii"))
        _put(digest, array.tobytes(order="C"))
    return digest.hexdigest()


def hash_payload(payload: Mapping) -> str:
    """Deterministic hex SHA-256 of what a site sends: arrays as in :func:`hash_weights`, the other
    fields (a codec's settings, tensor names, a version number) by their canonical JSON bytes; a
    field holding bytes anywhere (a secure-aggregation masked input) node by node, type-tagged.

    Args:
        payload: ``{name: numpy array | torch tensor | plain JSON value | nested dicts and lists
            holding bytes}`` (a packed update, or a dict of arrays, for which the hash equals
            :func:`hash_weights`).

    Returns:
        64 lowercase hex digits; equal on both ends of the wire for the same payload.

    Raises:
        CanonicalError: naming the entry whose key is not a string or whose value has no
            canonical form.
    """
    if not isinstance(payload, Mapping):
        raise CanonicalError("payload", f"must be a dict, got {type(payload).__name__}")
    if all(isinstance(v, (np.ndarray, np.generic)) or hasattr(v, "detach") for v in payload.values()):
        return hash_weights(payload)
    digest = hashlib.sha256(b"fedsegnet.ledger.payload.v1")
    for name in sorted(payload, key=lambda k: (not isinstance(k, str), str(k))):
        if not isinstance(name, str):
            raise CanonicalError(f"payload[{name!r}]", "keys must be strings")
        value = payload[name]
        _put(digest, name.encode("utf-8"))
        if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "detach"):
            _put(digest, b"array")
            _put(digest, bytes.fromhex(hash_weights({name: value})))
        elif _holds_bytes(value):  # e.g. a masked input of secure aggregation: its ring packed as bytes
            _put(digest, b"tree")
            _put_tree(digest, value, f"payload[{name!r}]")
        else:
            _put(digest, b"json")
            _put(digest, canonical_bytes(canonical_value(value, f"payload[{name!r}]")))
    return digest.hexdigest()


def _holds_bytes(value) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, Mapping):
        return any(_holds_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_bytes(v) for v in value)
    return False


def _put_tree(digest, value, field: str) -> None:
    """A nested value holding bytes, each node tagged with its type so that no two values share a
    stream: bytes (``b``), arrays (``a``, as :func:`hash_weights`), dicts (``d``, keys sorted), lists
    (``l``) and plain JSON leaves (``j``, canonical bytes)."""
    if isinstance(value, (bytes, bytearray)):
        _put(digest, b"b")
        _put(digest, bytes(value))
    elif isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "detach"):
        _put(digest, b"a")
        _put(digest, bytes.fromhex(hash_weights({"": value})))
    elif isinstance(value, Mapping):
        _put(digest, b"d" + struct.pack(">Q", len(value)))
        for key in sorted(value, key=lambda k: (not isinstance(k, str), str(k))):
            if not isinstance(key, str):
                raise CanonicalError(field, f"key {key!r} is a {type(key).__name__}; keys must be strings")
            _put(digest, key.encode("utf-8"))
            _put_tree(digest, value[key], f"{field}.{key}")
    elif isinstance(value, (list, tuple)):
        _put(digest, b"l" + struct.pack(">Q", len(value)))
        for i, item in enumerate(value):
            _put_tree(digest, item, f"{field}[{i}]")
    else:
        _put(digest, b"j")
        _put(digest, canonical_bytes(canonical_value(value, field)))
