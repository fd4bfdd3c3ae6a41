"""Soak run in FLARE POC mode: many rounds of the tiny preset, memory of every process per round.

Starts a real POC system (server + sites from their startup kits, mutual TLS on loopback), submits
``jobs/fedsegnet`` through the admin API and lets it run ``--rounds`` rounds. Every round the server's
record (``fedsegnet_rounds.jsonl``) holds the resident memory (RSS) of the server's job process and
of its parent, and of every site's job process and parent (sent in the update meta). This script
reads the records of the finished job and prints, per process, RSS at round ``--after`` and at the
end and the growth between them (the goal: under 5% after round 5), and writes the per-round series
as JSON and a PNG.

Re-run:
    python benchmarks/soak.py --rounds 30 --json docs/results/soak.json --png docs/results/soak.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def series(records: list[dict]) -> dict[str, list[float | None]]:
    """``{process: [RSS MiB per round]}`` for the server's job/parent and each site's job/parent process."""
    out = {"server job": [r.get("server_rss_mb") for r in records], "server parent": [r.get("server_parent_rss_mb") for r in records]}
    sites = sorted({s for r in records for s in r["sites"]})
    for site in sites:
        out[f"{site} job"] = [r["sites"].get(site, {}).get("rss_mb") for r in records]
        out[f"{site} parent"] = [r["sites"].get(site, {}).get("parent_rss_mb") for r in records]
    return out


def growth(values: list[float | None], after: int) -> dict:
    """RSS at round ``after``, at the end, the largest after it, and the growth in percent."""
    base, end = values[after], values[-1]
    later = [v for v in values[after:] if v is not None]
    if base is None or end is None or not later:
        return {"at": None, "end": None, "max": None, "growth_pct": None, "max_growth_pct": None}
    return {
        "at": base, "end": end, "max": max(later),
        "growth_pct": 100.0 * (end - base) / base, "max_growth_pct": 100.0 * (max(later) - base) / base,
    }  # fmt: skip


def plot(curves: dict, after: int, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, values in curves.items():
        ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], marker=".", label=name)
    ax.axvline(after, color="grey", linestyle=":", label=f"round {after}")
    ax.set_xlabel("round")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=4)
    p.add_argument("--after", type=int, default=5, help="growth is measured from this round to the last")
    p.add_argument("--workdir", help="keep the POC workspace here (default: a temporary folder)")
    p.add_argument("--json", help="write the per-round RSS series and growth here")
    p.add_argument("--png", help="write a plot of RSS per round here")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)

    from fedsegnet.data.synth import synthesize
    from fedsegnet.flare.ops.jobs import configure_job
    from fedsegnet.flare.ops.poc import PocSystem, find_in_result, free_port
    from fedsegnet.report import read_records

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedsegnet-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "site-1" / "dataset.json").exists():
        synthesize(data, sites=args.sites, cases=6, size=32, seed=0, test_cases=2)
    job = configure_job(
        REPO / "jobs" / "fedsegnet", work / "fedsegnet_soak", num_rounds=args.rounds, min_clients=args.sites,
        preset="tiny", local_steps=args.local_steps, seed=0, torch_threads=1, val_max_cases=2,
        overwrite=True,  # a --workdir reused: only this benchmark's own (marked) job copy is replaced
    )  # fmt: skip
    poc = PocSystem(
        work / "poc", [f"site-{i + 1}" for i in range(args.sites)], data_root=data,
        fed_learn_port=free_port(), admin_port=free_port(),
    )  # fmt: skip
    t0 = time.perf_counter()
    poc.prepare(overwrite=True)  # replaces only a POC workspace fedsegnet prepared
    with poc:
        poc.start()
        job_id = poc.submit(job)
        print(f"job {job_id}: {args.rounds} rounds, {args.sites} sites, preset tiny, {args.local_steps} local steps")

        def on_round(rec):
            sites = " ".join(f"{s} {e.get('rss_mb') or 0:.0f}/{e.get('parent_rss_mb') or 0:.0f}" for s, e in rec["sites"].items())
            print(
                f"  round {rec['round']:>3}: server job/parent {rec['server_rss_mb']:.0f}/{rec['server_parent_rss_mb']:.0f} MiB, "
                f"sites job/parent {sites} MiB", flush=True,
            )  # fmt: skip

        status = poc.wait(job_id, timeout=args.timeout, on_round=on_round)
        result = poc.download(job_id, work / "results")
    seconds = time.perf_counter() - t0
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    if status != "FINISHED:COMPLETED" or len(records) != args.rounds:
        print(f"job ended {status} with {len(records)} of {args.rounds} round records; see {result}")
        return 1
    curves = series(records)
    table = {name: growth(values, args.after) for name, values in curves.items()}
    print(f"\n{status} in {seconds:.0f} s. RSS (MiB) at round {args.after} -> round {args.rounds - 1}:")
    print(f"  {'process':<16}{'round ' + str(args.after):>10}{'end':>10}{'max':>10}{'growth':>10}{'max growth':>12}")
    for name, g in table.items():
        if g["at"] is None:
            print(f"  {name:<16}{'n/a':>10}")
            continue
        print(f"  {name:<16}{g['at']:>10.1f}{g['end']:>10.1f}{g['max']:>10.1f}{g['growth_pct']:>9.2f}%{g['max_growth_pct']:>11.2f}%")
    worst = max(g["max_growth_pct"] for g in table.values() if g["max_growth_pct"] is not None)
    print(f"largest growth after round {args.after}: {worst:.2f}% (goal < 5%: {'met' if worst < 5 else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rounds": args.rounds, "sites": args.sites, "local_steps": args.local_steps, "after": args.after,
             "seconds": seconds, "status": status, "growth": table, "rss_mb": curves}, indent=2,
        ) + "\n")  # fmt: skip
    if args.png:
        plot(curves, args.after, Path(args.png), f"POC soak: {args.sites} sites, {args.rounds} rounds (tiny preset)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
