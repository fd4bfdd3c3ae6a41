"""Two probes behind the soak figures in docs/deployment.md.

``--probe inprocess``: the site code alone, without FLARE. Two synthetic sites train and aggregate in
one process (``fedsegnet.federation.run_federation``: the same SiteTrainer, codec with error feedback
and AAM as the job) for ``--rounds`` rounds; prints this process's RSS and the Python-level
allocations (tracemalloc) every 10 rounds. Flat RSS here means a growth seen in POC comes from
FLARE's processes, not from FedSegNet's site code.

``--probe sessions``: a POC server with 2 sites and no job; prints the server parent's RSS after 60 s
idle, after 60 s of admin-API calls each through a *new* session (login), after 60 s idle, and after
60 s of the same calls through *one* session.

Re-run:
    python benchmarks/soak_probes.py --probe inprocess --rounds 60
    python benchmarks/soak_probes.py --probe sessions
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path


def inprocess(rounds: int, work: Path):
    import torch

    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.config import build_train_config
    from fedsegnet.data.synth import synthesize
    from fedsegnet.federation import run_federation
    from fedsegnet.memory import rss_mb

    torch.set_num_threads(1)
    synthesize(work / "data", sites=2, cases=6, size=32, seed=0, test_cases=2)
    config = build_train_config(preset="tiny", local_steps=2, seed=0, val_max_cases=2)
    sites = {s: work / "data" / s for s in ("site-1", "site-2")}
    tracemalloc.start()

    def on_round(rec):
        if rec["round"] % 10 == 0 or rec["round"] == rounds - 1:
            traced = tracemalloc.get_traced_memory()[0] / 2**20
            print(f"round {rec['round']:>3}: RSS {rss_mb():.1f} MiB, Python allocations {traced:.2f} MiB", flush=True)

    run_federation(sites, config, rounds=rounds, aggregation="aam", codec=SparseQuantCodec(), on_round=on_round, device="cpu")


def sessions(work: Path):
    import psutil

    from fedsegnet.data.synth import synthesize
    from fedsegnet.flare.ops.poc import PocSystem, free_port

    synthesize(work / "data", sites=2, cases=4, size=32, seed=0, test_cases=1)
    poc = PocSystem(work / "poc", ["site-1", "site-2"], data_root=work / "data", fed_learn_port=free_port(), admin_port=free_port())
    poc.prepare(overwrite=True)  # replaces only a POC workspace fedsegnet prepared
    with poc:
        poc.start()
        server = psutil.Process(poc.pids["server"])

        def rss():
            return server.memory_info().rss / 2**20

        for phase in ("idle", "a new session per call", "idle", "one session for all calls"):
            start, t0, calls = rss(), time.monotonic(), 0
            if phase == "a new session per call":
                while time.monotonic() - t0 < 60:
                    with poc.session() as s:
                        s.list_jobs()
                    calls += 1
                    time.sleep(0.5)
            elif phase == "one session for all calls":
                with poc.session() as s:
                    while time.monotonic() - t0 < 60:
                        s.list_jobs()
                        calls += 1
                        time.sleep(0.5)
            else:
                time.sleep(60)
            print(f"{phase:<28} ({calls:>3} calls): server parent RSS {start:.1f} -> {rss():.1f} MiB", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", choices=("inprocess", "sessions"), required=True)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--workdir", help="default: a temporary folder")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedsegnet-probe-")).resolve()
    if args.probe == "inprocess":
        inprocess(args.rounds, work)
    else:
        sessions(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
