"""Codec speed on a full-size update: SwinUNETR (the ``gpu`` preset's network, ~62M parameters) on CPU.

The update has the shapes of MONAI ``SwinUNETR(in_channels=4, out_channels=3, feature_size=48)``'s
floating-point state-dict tensors (its int64 ``relative_position_index`` buffers are not trained and
are left out) filled with seeded ``N(0, 1) * 0.01`` values per tensor. Timed in one process (the
median of ``--repeats`` calls of each operation, see below):

- ``memory copy``: ``clone()`` of every tensor, the floor any codec is compared with;
- ``ours sampled``: :class:`~fedsegnet.compression.SparseQuantCodec` at the job default
  (``ratio=0.1, bits=4``, block 256; ``--ratio``/``--bits`` change it) ``encode`` (with a zero residual of the update's shapes, as error feedback passes in its first
  round) + :func:`~fedsegnet.compression.decode_payload`, for ``scope="tensor"`` and ``"global"``
  with the default sampled threshold;
- ``ours exact``: the same with ``selection="exact"`` (``torch.topk``), both scopes.

Reported per row: encode, decode and total seconds, total over the memory copy and over exact top-k
of the same scope, payload bytes (:func:`~fedsegnet.compression.payload_nbytes`) and the compression
ratio against the update's float32 bytes. The goal checked: compress + decompress under 0.5 s on
a 2-core CPU (the sampled rows). The 1-minute load average before and after the run is printed
(and written): other processes on the machine slow every row, multi-threaded torch operations most.

The operations are timed round-robin (one warm-up pass over all of them, then ``--repeats`` passes,
each calling every operation once), so a slow phase of the machine (e.g. a VM's first touches of
fresh memory, which on the reference machine made whichever operation ran first up to 10x slower)
hits every row alike instead of whichever row happened to run then.

    python benchmarks/codec_speed.py                       # job default, 2 threads, 5 repeats
    python benchmarks/codec_speed.py --ratio 0.01 --bits 8
    python benchmarks/codec_speed.py --threads 1 --json codec_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

GOAL_SECONDS = 0.5


def swinunetr_update(seed: int = 0) -> dict[str, torch.Tensor]:
    """``{name: float32 tensor}`` with SwinUNETR's floating-point state-dict shapes, values N(0, 1) * 0.01.

    Args:
        seed: seed of the values. Defaults to 0.

    Returns:
        The update (~62M values).
    """
    from monai.networks.nets import SwinUNETR

    shapes = {
        k: v.shape
        for k, v in SwinUNETR(in_channels=4, out_channels=3, feature_size=48).state_dict().items()
        if v.is_floating_point()
    }
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.01 for k, shape in shapes.items()}


def interleaved_medians(ops: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each operation over ``repeats`` round-robin passes, after one warm-up pass.

    Args:
        ops: ``{name: callable with no arguments}``, called in dict order in every pass.
        repeats: timed passes, >= 1.

    Returns:
        ``{name: median seconds}``.
    """
    for fn in ops.values():
        fn()
    times = {name: [] for name in ops}
    for _ in range(repeats):
        for name, fn in ops.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads. Default: 2")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (median). Default: 5")
    p.add_argument("--ratio", type=float, default=0.1, help="share of values sent. Default: 0.1 (the job's)")
    p.add_argument("--bits", type=int, default=4, help="bits per sent value. Default: 4 (the job's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here (a JSON list)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats}: must be >= 1")

    from fedsegnet.compression import SparseQuantCodec, decode_payload, payload_nbytes

    torch.set_num_threads(args.threads)
    update = swinunetr_update(args.seed)
    n_values = sum(v.numel() for v in update.values())
    dense_bytes = 4 * n_values
    residual = {k: torch.zeros_like(v) for k, v in update.items()}
    print(
        f"update: SwinUNETR(4, 3, feature_size=48), {len(update)} tensors, {n_values:,} values "
        f"({dense_bytes / 2**20:.1f} MiB float32); {torch.get_num_threads()} torch thread(s), "
        f"median of {args.repeats} round-robin passes after 1 warm-up pass"
    )

    codecs = {
        (selection, scope): SparseQuantCodec(ratio=args.ratio, bits=args.bits, scope=scope, selection=selection)
        for selection in ("sampled", "exact")
        for scope in ("tensor", "global")
    }
    encode = {
        key: (lambda codec=codec: codec.encode(update, residual, generator=torch.Generator().manual_seed(args.seed))[0])
        for key, codec in codecs.items()
    }
    payloads = {key: fn() for key, fn in encode.items()}  # what the decode timings decode
    ops = {"copy": lambda: {k: v.clone() for k, v in update.items()}}
    for key in codecs:
        ops[("encode", *key)] = encode[key]
        ops[("decode", *key)] = lambda payload=payloads[key]: decode_payload(payload, as_numpy=False)
    load_before = os.getloadavg()[0]
    t = interleaved_medians(ops, args.repeats)
    load_after = os.getloadavg()[0]
    t_copy = t["copy"]

    rows = [{
        "name": "memory copy", "scope": None, "selection": None, "encode_s": None, "decode_s": None,
        "seconds": t_copy, "payload_bytes": dense_bytes, "compression_ratio": 1.0,
    }]  # fmt: skip
    for (selection, scope), payload in payloads.items():
        t_enc, t_dec = t[("encode", selection, scope)], t[("decode", selection, scope)]
        nbytes = payload_nbytes(payload)
        sent = int(payload["table"][:, 2].sum())
        rows.append({
            "name": f"ours {selection} {scope}", "scope": scope, "selection": selection, "encode_s": t_enc,
            "decode_s": t_dec, "seconds": t_enc + t_dec, "payload_bytes": nbytes,
            "compression_ratio": dense_bytes / nbytes, "values_sent": sent, "share_sent": sent / n_values,
        })  # fmt: skip

    exact = {r["scope"]: r["seconds"] for r in rows if r["selection"] == "exact"}
    for r in rows:
        r["vs_memory_copy"] = r["seconds"] / t_copy
        r["vs_exact_topk"] = r["seconds"] / exact[r["scope"]] if r["scope"] in exact else None

    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    head = (
        f"{'method':<22}{'encode s':>10}{'decode s':>10}{'total s':>10}{'x copy':>9}{'x exact':>9}"
        f"{'payload B':>14}{'vs fp32':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['name']:<22}{fmt(r['encode_s'], '.3f'):>10}{fmt(r['decode_s'], '.3f'):>10}{r['seconds']:>10.3f}"
            f"{r['vs_memory_copy']:>9.1f}{fmt(r['vs_exact_topk'], '.2f'):>9}{r['payload_bytes']:>14,}"
            f"{r['compression_ratio']:>8.1f}x"
        )
    sampled = [r for r in rows if r["selection"] == "sampled"]
    worst = max(sampled, key=lambda r: r["seconds"])
    met = worst["seconds"] < GOAL_SECONDS
    print(
        f"goal: compress + decompress under {GOAL_SECONDS:g} s on a 2-core CPU -> "
        f"{'MET' if met else 'NOT MET'} (slowest sampled row: {worst['name']}, {worst['seconds']:.3f} s, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})"
    )
    print(f"machine load (1-minute average, {os.cpu_count()} CPUs): {load_before:.2f} before, {load_after:.2f} after")
    if args.json:  # a list of rows; each carries the run's settings
        common = {
            "network": "SwinUNETR(in_channels=4, out_channels=3, feature_size=48)", "n_tensors": len(update),
            "n_values": n_values, "threads": torch.get_num_threads(), "repeats": args.repeats, "ratio": args.ratio,
            "bits": args.bits, "goal_seconds": GOAL_SECONDS, "goal_met": met, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": load_after,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps([{**r, **common} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
