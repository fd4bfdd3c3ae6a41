"""Would entropy coding of the quantised values pay? Payload bytes with and without, on real updates.

A short real federation (:func:`fedsegnet.federation.run_federation`: synthetic sites, the ``cpu``
preset's hybrid Transformer U-Net, AAM) runs with the job's uplink codec (``SparseQuantCodec`` at
the job default, 10% kept, 4 bits, with each site's error feedback, as the job's sites encode).
Every payload a site sends is kept, and for each top-k record this script measures, per tensor (the
unit a decoder reads):

- the codes raw (4-bit, two per byte) and compressed with zlib (DEFLATE: ``Z_HUFFMAN_ONLY``
  and ``Z_RLE``, level 6 default strategy) and lzma (``preset=6``), each kept only where smaller
  (as a per-tensor coding flag would), and the codes' order-0 entropy (the bound of a coder that
  sees one code at a time);
- the positions as sent (the codec's smallest lossless coding, DEFLATE of varint gaps at 10%) and
  the varint gaps compressed with lzma;
- the time to compress and decompress the codes (seconds per payload, one thread).

Reported: bytes per round and site (mean over the payloads) of the payload without entropy coding
of the values (version 1: every value stored raw) and as the codec sends it now (version 2: codes
DEFLATE-compressed with ``Z_RLE`` where smaller, dense tensors' codes too), each option's share of
the version-1 payload saved, and the speed.

Re-run (about 3 minutes on 2 busy CPU cores):
    python benchmarks/entropy_coding.py --json entropy_coding.json
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

CODERS = {
    "zlib_huffman": lambda b: _deflate(b, zlib.Z_HUFFMAN_ONLY),
    "zlib_rle": lambda b: _deflate(b, zlib.Z_RLE),
    "zlib_default": lambda b: _deflate(b, zlib.Z_DEFAULT_STRATEGY),
    "lzma": lambda b: lzma.compress(b, preset=6),
}
DECODERS = {"zlib_huffman": zlib.decompress, "zlib_rle": zlib.decompress, "zlib_default": zlib.decompress, "lzma": lzma.decompress}


def _deflate(data: bytes, strategy: int) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    return z.compress(data) + z.flush()


def _entropy_bytes(codes: np.ndarray, bits: int, count: int) -> float:
    """Order-0 entropy of the ``count`` codes, in bytes."""
    c = np.empty(codes.size * 2, np.uint8)
    c[0::2], c[1::2] = codes & 0x0F, codes >> 4
    c = c[:count] if bits == 4 else codes
    counts = np.bincount(c)
    p = counts[counts > 0] / max(c.size, 1)
    return float(-(p * np.log2(p)).sum() * c.size / 8)


def measure(payload: dict) -> dict:
    """Bytes of one payload as sent and with each option (module docstring); seconds per coder."""
    from fedsegnet.compression import payload_nbytes
    from fedsegnet.compression.codec import stored_values, unpack_payload
    from fedsegnet.compression.index_coding import decode_indices, varint_encode

    records = unpack_payload(payload)
    raw_values = {
        n: stored_values(r["values"], r["value_coding"], r["bits"], r["count"] if r["mode"] == "sparse" else r["numel"], n)
        for n, r in records.items()
    }
    # the payload with every value stored raw, in version 1's 8-column table: no entropy coding
    without = payload_nbytes(payload) - 4 * len(records) * (payload["table"].shape[1] - 8)
    without += sum(raw_values[n].nbytes - r["values"].size for n, r in records.items())
    out = {"payload": without, "payload_as_sent": payload_nbytes(payload), "version": payload["version"], "codes": 0,
           "codes_entropy": 0.0, "index": 0, "index_lzma": 0}  # fmt: skip
    out.update({f"codes_{c}": 0 for c in CODERS})
    seconds = {f"{c}_{d}": 0.0 for c in CODERS for d in ("compress", "decompress")}
    for name, rec in records.items():
        if rec["mode"] != "sparse" or rec["count"] == 0:
            continue
        codes = raw_values[name].view(np.uint8)
        raw = codes.tobytes()
        out["codes"] += len(raw)
        out["codes_entropy"] += _entropy_bytes(codes, rec["bits"], rec["count"])
        for c, fn in CODERS.items():
            t = time.perf_counter()
            packed = fn(raw)
            seconds[f"{c}_compress"] += time.perf_counter() - t
            t = time.perf_counter()
            DECODERS[c](packed)
            seconds[f"{c}_decompress"] += time.perf_counter() - t
            out[f"codes_{c}"] += min(len(packed), len(raw))
        out["index"] += rec["index"].size
        idx = decode_indices(rec["index_coding"], rec["index"], rec["count"], rec["numel"], name)
        gaps = np.diff(idx, prepend=-1) - 1
        out["index_lzma"] += min(len(lzma.compress(varint_encode(gaps).tobytes(), preset=6)), rec["index"].size)
    return {**out, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="federated rounds. Default: 3")
    p.add_argument("--sites", type=int, default=2, help="synthetic sites. Default: 2")
    p.add_argument("--cases", type=int, default=6, help="training cases per site. Default: 6")
    p.add_argument("--size", type=int, default=40, help="volume edge (voxels). Default: 40")
    p.add_argument("--local-steps", type=int, default=20, help="local steps per round. Default: 20")
    p.add_argument("--preset", default="cpu", help="model preset. Default: cpu (hybrid U-Net, 0.4M parameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    import torch

    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.config import build_train_config
    from fedsegnet.data.synth import synthesize
    from fedsegnet.federation import run_federation

    class RecordingCodec(SparseQuantCodec):
        """The job's codec, keeping every payload it makes."""

        payloads: list = []

        def encode(self, update, residual=None, generator=None):
            payload, new_residual = super().encode(update, residual, generator)
            self.payloads.append(payload)
            return payload, new_residual

    torch.set_num_threads(2)
    codec = RecordingCodec()  # the job default: ratio 0.1, 4 bits
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(root, sites=args.sites, cases=args.cases, size=args.size, seed=args.seed + 1, test_cases=2)
        config = build_train_config(preset=args.preset, local_steps=args.local_steps, seed=args.seed, val_max_cases=1)
        dirs = {f"site-{i}": root / f"site-{i}" for i in range(1, args.sites + 1)}
        t = time.perf_counter()
        run_federation(dirs, config, rounds=args.rounds, test_dir=root / "test", device="cpu", codec=codec)
        train_s = time.perf_counter() - t
    rows = [measure(pl) for pl in codec.payloads]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seconds"}
    secs = {k: float(np.mean([r["seconds"][k] for r in rows])) for k in rows[0]["seconds"]}
    print(f"{len(rows)} payloads ({args.sites} sites x {args.rounds} rounds, preset {args.preset}, "
          f"{args.local_steps} local steps; training took {train_s:.0f} s); codec {codec.config()}")  # fmt: skip
    print(f"payload without entropy coding of the values (version 1): {mean['payload']:,.0f} B; top-k codes "
          f"{mean['codes']:,.0f} B, positions {mean['index']:,.0f} B; as sent (version {rows[0]['version']}): "
          f"{mean['payload_as_sent']:,.0f} B ({1 - mean['payload_as_sent'] / mean['payload']:.1%} smaller)")  # fmt: skip
    print(f"{'option':<28}{'bytes':>12}{'saved B':>12}{'of payload':>12}{'compress s':>12}{'decompress s':>14}")
    for c in CODERS:
        saved = mean["codes"] - mean[f"codes_{c}"]
        print(f"{'codes ' + c:<28}{mean[f'codes_{c}']:>12,.0f}{saved:>12,.0f}{saved / mean['payload']:>11.1%}"
              f"{secs[f'{c}_compress']:>12.4f}{secs[f'{c}_decompress']:>14.4f}")  # fmt: skip
    saved = mean["codes"] - mean["codes_entropy"]
    print(f"{'codes order-0 entropy':<28}{mean['codes_entropy']:>12,.0f}{saved:>12,.0f}{saved / mean['payload']:>11.1%}")
    saved = mean["index"] - mean["index_lzma"]
    print(f"{'positions lzma':<28}{mean['index_lzma']:>12,.0f}{saved:>12,.0f}{saved / mean['payload']:>11.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "codec": codec.config(), "payloads": len(rows), "mean_bytes": mean,
            "mean_seconds": secs, "per_payload": rows,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
