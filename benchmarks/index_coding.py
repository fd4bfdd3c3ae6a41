"""Bytes of each index coding of random top-k positions, against their entropy.

    python benchmarks/index_coding.py [--json PATH]

For tensors of 100,000 and 10,000,000 values with 1% and 10% of positions kept (uniformly at
random, seeded), prints the bytes of every coding in ``fedsegnet.compression.index_coding``, which
one ``auto`` picks, and the entropy bound ``numel * H(share) / 8``.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from fedsegnet.compression.index_coding import INDEX_CODINGS, encode_indices


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    print(f"{'values':>12} {'kept':>6} " + " ".join(f"{c:>10}" for c in INDEX_CODINGS) + f" {'auto':>8} {'entropy':>10}")
    for numel in (100_000, 10_000_000):
        for share in (0.01, 0.1):
            idx = np.sort(rng.choice(numel, size=int(numel * share), replace=False))
            sizes = {c: int(encode_indices(idx, numel, c)[1].size) for c in INDEX_CODINGS}
            auto = encode_indices(idx, numel, "auto")[0]
            entropy = int(numel * -(share * math.log2(share) + (1 - share) * math.log2(1 - share)) / 8)
            rows.append({"numel": numel, "share": share, **sizes, "auto": auto, "entropy_bytes": entropy})
            print(f"{numel:>12,} {share:>6.0%} " + " ".join(f"{sizes[c]:>10,}" for c in INDEX_CODINGS)
                  + f" {auto:>8} {entropy:>10,}")  # fmt: skip
            print(f"{'':>20}deflate / varint = {sizes['deflate'] / sizes['varint']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
