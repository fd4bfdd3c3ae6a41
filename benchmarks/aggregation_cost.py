"""Cost of aggregation on the server: AAMAggregator against FLARE's InTimeAccumulateWeightedAggregator.

One round with K sites of a large model (default: the ``gpu`` preset's SwinUNETR, feature size 48,
about 62M parameters). Each site's update arrives as the server's decoder hands it over: a dense
float32 update in which only the top-k share of values is non-zero (``--density``, 0.1 = the
``jobs/fedsegnet`` default; 1.0 = uncompressed). Updates are made one at a time just before
``accept`` and dropped afterwards, as ScatterAndGather drops a result once the aggregator has it, so
the memory measured is what each aggregator keeps plus what it needs to aggregate.

``aam_sparse`` is ``aam`` fed what ``UpdateDecoder(sparse=True)`` hands over: each top-k tensor as
its positions and values (:class:`~fedsegnet.compression.codec.SparseTensor`, made before the timed
``accept``), so ``accept`` keeps it without a dense pass.

The ``_wire`` rows start from what the server receives: each site's (dense) update encoded by the
job's encoder (:class:`~fedsegnet.compression.SparseQuantCodec` at the job default, 10% kept, 4
bits; a first round, no residual; not timed), and the timed path is the server's: the
``UpdateDecoder`` with the arguments the job gives it, then ``accept``, then ``aggregate``.
``flare_intime_wire`` decodes dense (``sparse=False``, what ``FedSegNetRecipe`` gives FLARE's
aggregator); ``aam_wire`` takes the ``UpdateDecoder`` arguments of ``jobs/fedsegnet``'s server config
(``sparse="packed"``: the records kept as received). Their memory goal, printed beside the peak: 2
dense copies of the model plus the bytes of the payloads received (``payload_nbytes``). The sites'
encoding runs in a child process that writes each payload to a file; the measuring process reads
one just before its timed calls (as a server deserialises a received message), so the encoder's
freed working memory, which glibc keeps in its per-thread arenas (about 125 MB at this model
size, more than the aggregator itself holds), is not counted as the server's.

Each (method, K) runs in a fresh process: time of all decoder and ``accept`` calls plus
``aggregate`` (making and encoding the updates is not timed), and the peak resident memory above
the process's baseline once the model shapes are known, sampled every 2 ms from /proc while the
timed calls run (it includes the one update or payload in flight). The ratio to FLARE's aggregator
(fed the same way: ``flare_intime`` for the aggregator-only rows, ``flare_intime_wire`` for the
``_wire`` rows) is printed side by side for each K.

Re-run:
    python benchmarks/aggregation_cost.py --sites 2,8,32 --json docs/results/aggregation_cost.json
    python benchmarks/aggregation_cost.py --sites 8 --density 1.0     # uncompressed updates
    python benchmarks/aggregation_cost.py --methods flare_intime_wire,aam_wire   # the server's path only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("flare_intime", "aam", "aam_sparse", "median", "flare_intime_wire", "aam_wire")
JOB_SERVER_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "fedsegnet" / "app" / "config" / "config_fed_server.json"


def _rss_mb() -> float:
    """Current resident memory of this process (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRSS:
    """Sample the resident memory every few milliseconds in a thread while a window is open; keep the peak."""

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval, self.peak, self._stop, self._open = interval, 0.0, threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            if self._open.is_set():
                self.peak = max(self.peak, _rss_mb())
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def window(self):
        """Sample while the block runs (the timed calls)."""
        self.peak = max(self.peak, _rss_mb())
        self._open.set()
        try:
            yield
        finally:
            self._open.clear()
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _shapes(preset: str) -> dict:
    import torch

    from fedsegnet.config import build_train_config
    from fedsegnet.training.site import build_model_for

    torch.manual_seed(0)
    model = build_model_for(build_train_config(preset=preset), in_channels=1, num_classes=3)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.dtype.is_floating_point}


def worker(method: str, sites: int, density: float, preset: str, seed: int) -> dict:
    import gc

    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import make_model_learnable
    from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
    from nvflare.app_common.app_constant import AppConstants

    from fedsegnet.compression import SparseQuantCodec, payload_nbytes
    from fedsegnet.compression.codec import SparseTensor
    from fedsegnet.flare.aggregator import AAMAggregator
    from fedsegnet.flare.compression import UpdateDecoder
    from fedsegnet.flare.constants import CodecMeta, UpdateMeta

    shapes = _shapes(preset)  # the model is built and dropped here
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    global_model = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    base_method = method.removesuffix("_wire").removesuffix("_sparse")
    agg = InTimeAccumulateWeightedAggregator(expected_data_kind="WEIGHT_DIFF") if base_method == "flare_intime" else (
        AAMAggregator(method=base_method))  # fmt: skip
    wire = method.endswith("_wire")
    codec = SparseQuantCodec() if wire else None  # the job default: 10% kept, 4 bits
    decoder = (UpdateDecoder(**_job_decoder_args()) if base_method != "flare_intime" else UpdateDecoder()) if wire else None
    from nvflare.apis.event_type import EventType

    agg.handle_event(EventType.START_RUN, FLContext())  # FLARE's aggregator sets itself up at START_RUN

    def ctx(site):
        c = FLContext()
        c.set_prop(AppConstants.CURRENT_ROUND, 1, private=True, sticky=False)
        c.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(global_model, {}), private=True, sticky=False)
        peer = FLContext()
        peer.put(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
        c.set_peer_context(peer)
        return c

    if wire:  # the sites' payloads, encoded in a child process (not timed, not in this process's memory)
        payload_dir = Path(tempfile.mkdtemp(prefix="aggregation_cost_"))
        subprocess.run([sys.executable, __file__, "--encode", str(payload_dir), str(sites), "--preset", preset,
                        "--seed", str(seed)], check=True)  # fmt: skip
    else:
        rng = np.random.default_rng(seed)
        base = _site_base(shapes, rng)
    gc.collect()
    baseline = _rss_mb()
    seconds, payload_bytes = 0.0, 0
    sampler = _PeakRSS().__enter__()
    for i in range(sites):
        site = f"site-{i + 1}"
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 10, UpdateMeta.N_TRAIN: 10, UpdateMeta.LABEL_AGREEMENT: 0.8}
        if wire:  # what the site's encoder sent in its first round, as received (not timed)
            path = payload_dir / f"{site}.pkl"
            update = pickle.loads(path.read_bytes())
            path.unlink()
            payload_bytes += payload_nbytes(update)
            meta[CodecMeta.ENCODED] = True
        else:
            update = {}
            for k, v in _site_update(base, rng):
                if density < 1:
                    v[rng.random(v.shape) >= density] = 0.0
                if method.endswith("_sparse") and density < 1:  # as the sparse decoder hands it over (not timed)
                    index = np.flatnonzero(v)
                    v = SparseTensor(v.shape, index, v.reshape(-1)[index])
                update[k] = v
        shareable = DXO(DataKind.WEIGHT_DIFF, data=update, meta=meta).to_shareable()
        shareable.set_header(AppConstants.CURRENT_ROUND, 1)
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        del update
        gc.collect()
        c = ctx(site)
        with sampler.window():
            t0 = time.perf_counter()
            if decoder is not None:
                shareable = decoder.process(shareable, c)
            ok = agg.accept(shareable, c)
            seconds += time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"{method}: update of {site} was not accepted")
        del shareable
    gc.collect()
    with sampler.window():
        t0 = time.perf_counter()
        out = agg.aggregate(ctx("server"))
        seconds += time.perf_counter() - t0
    sampler.__exit__(None, None, None)
    if wire:
        payload_dir.rmdir()  # made empty by the loop
    assert out is not None
    update_mb = 4 * n_params / 2**20
    return {
        "method": method, "sites": sites, "density": density, "n_params": n_params, "seconds": seconds,
        "update_mb": update_mb, "peak_mb_above_baseline": sampler.peak - baseline,
        "payload_mb": payload_bytes / 2**20 if wire else None,
        "decoder": dict(sparse=decoder.sparse) if wire else None, "codec": codec.config() if wire else None,
        "memory_goal_mb": 2 * update_mb + payload_bytes / 2**20 if wire else None,
    }  # fmt: skip


def _site_base(shapes: dict, rng):
    """The direction every site's update shares (float32 arrays of ``shapes``)."""
    import numpy as np

    return {k: rng.standard_normal(s).astype(np.float32) * 1e-3 for k, s in shapes.items()}


def _site_update(base: dict, rng):
    """One site's dense update, tensor by tensor: ``(name, the shared direction plus its own noise)``
    (new arrays; drawn lazily, so a caller may draw from ``rng`` between tensors)."""
    import numpy as np

    for k, b in base.items():
        yield k, b + rng.standard_normal(b.shape).astype(np.float32) * 5e-4


def encode_payloads(out_dir: Path, sites: int, preset: str, seed: int) -> None:
    """Write each site's first-round payload (the job's codec, its default settings) to ``out_dir/site-<i>.pkl``."""
    import numpy as np

    from fedsegnet.compression import SparseQuantCodec, seeded_generator

    codec = SparseQuantCodec()  # the job default: 10% kept, 4 bits
    rng = np.random.default_rng(seed)
    base = _site_base(_shapes(preset), rng)
    for i in range(sites):
        site = f"site-{i + 1}"
        payload = codec.encode(dict(_site_update(base, rng)), generator=seeded_generator(seed, site, 1, "up"))[0]  # residual dropped
        (out_dir / f"{site}.pkl").write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def _job_decoder_args() -> dict:
    """The ``UpdateDecoder`` arguments of ``jobs/fedsegnet``'s server config."""
    config = json.loads(JOB_SERVER_CONFIG.read_text())
    filters = [f for group in config.get("task_result_filters", []) for f in group.get("filters", [])]
    return next(f.get("args", {}) for f in filters if f["path"].endswith(".UpdateDecoder"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", default="2,8,32", help="comma list of site counts")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--density", type=float, default=0.1, help="share of non-zero values per update (1.0 = dense)")
    p.add_argument("--preset", default="gpu", help="model preset (gpu: SwinUNETR fs48, ~62M parameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SITES"), help=argparse.SUPPRESS)
    p.add_argument("--encode", nargs=2, metavar=("DIR", "SITES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.encode:
        encode_payloads(Path(args.encode[0]), int(args.encode[1]), args.preset, args.seed)
        return 0
    if args.worker:
        row = worker(args.worker[0], int(args.worker[1]), args.density, args.preset, args.seed)
        print("ROW " + json.dumps(row))
        return 0
    rows = []
    sites = [int(s) for s in args.sites.split(",")]
    methods = args.methods.split(",")
    print(f"preset {args.preset}, density {args.density}; methods {methods}; sites {sites}", flush=True)
    for k in sites:
        for m in methods:
            cmd = [sys.executable, __file__, "--worker", m, str(k), "--density", str(args.density), "--preset", args.preset,
                   "--seed", str(args.seed)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("ROW ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{m} x {k}: failed (rc {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(line[4:])
            rows.append(row)
            print(f"{m:>17} x {k:>2} sites: {row['seconds']:7.2f} s, peak +{row['peak_mb_above_baseline']:8.0f} MB "
                  f"({row['n_params'] / 1e6:.1f}M parameters)", flush=True)  # fmt: skip
    print(
        "\n| sites | method | seconds | x FLARE | peak MB above baseline | x FLARE | goal MB (2 models + payloads) | peak / goal |"
        "\n|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for k in sites:
        for r in (r for r in rows if r["sites"] == k):
            flare = "flare_intime_wire" if r["method"].endswith("_wire") else "flare_intime"
            ref = next((x for x in rows if x["sites"] == k and x["method"] == flare), None)
            ts = f"{r['seconds'] / ref['seconds']:.2f}" if ref else ""
            ms = f"{r['peak_mb_above_baseline'] / max(ref['peak_mb_above_baseline'], 1):.2f}" if ref else ""
            goal = r.get("memory_goal_mb")
            gs = f"{goal:.0f} | {r['peak_mb_above_baseline'] / goal:.2f}" if goal else "- | -"
            print(f"| {k} | {r['method']} | {r['seconds']:.2f} | {ts} | {r['peak_mb_above_baseline']:.0f} | {ms} | {gs} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "density": args.density, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
