"""Personalisation benchmark: sites that scan different organs, each scored on its own test split.

The ``organs`` scenario of ``fedsegnet data synth``: 4 sites, each with its own host structure
(shape, size, texture, intensity) and a lesion inside it; lesions look alike at every site, hosts
do not. Each site holds its own held-out test cases (never trained on). Every method uses the same
network (``dca_unetr``, the hybrid Transformer U-Net with a decoupled cross-attention block: with
every parameter shared it is an ordinary network), preset ``tiny`` and FedAvg's sample-count weights
with dense updates (``--aggregation aam --compress`` for the job's defaults: AAM treats a site this
different as an outlier and gives it the floor weight, which is a finding of its own):

* ``fedavg``: one global model for every site;
* ``local_only``: each site trains alone for as many steps;
* ``finetune``: the final global model fine-tuned at each site (``personal_steps`` steps);
* ``fedbn``: normalisation layers stay at the sites (Li et al., ICLR 2021);
* ``ditto``: each site also trains a personal model towards the global one (Li et al., ICML 2021);
* ``dca``: the DCA block's query projections and norms stay at the sites (FedOAP);
* ``dca_pbl``: ``dca`` plus the perturbed boundary loss.

Diagnostic (not in the default ``--methods``): ``dca_queries``: only the DCA block's queries and
norms stay at the sites (the first design; the spatial adapter and the network's norms are shared).

Scores: Dice (x100) and HD95 (mm), mean over foreground classes, of each site's personalised model
on the site's own test split, then the mean over sites; mean ± sd over seeds.

Re-run:
    python benchmarks/personalization.py --quick --json docs/results/personalization_quick.json
    python benchmarks/personalization.py --json docs/results/personalization.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import apply_size, print_summary, setup_torch, summarize, work_root, write_results

METHODS = ("fedavg", "local_only", "finetune", "fedbn", "ditto", "dca", "dca_pbl")
PERSONAL = {
    "fedavg": {"method": "none"},
    "local_only": {"method": "none"},
    "finetune": {"method": "finetune"},
    "fedbn": {"method": "fedbn"},
    "ditto": {"method": "ditto"},
    "dca": {"method": "dca"},
    "dca_pbl": {"method": "dca", "boundary_weight": 1.0},
    "dca_queries": {"method": "none", "personal_keys": ("dca.*.q_proj.*", "dca.*.norm_q.*", "dca.*.norm_kv.*")},
}
DIAGNOSTICS = ("dca_queries",)
SIZES = {
    "full": {"seeds": [0, 1, 2], "rounds": 10, "local_steps": 30, "cases": 8, "size": 40, "test_cases": 4},
    # seed 0, 32^3 volumes (half the voxels: the full settings take about 10 minutes for one seed);
    # with fewer steps whether the lesion is learned at all is a coin toss
    "quick": {"seeds": [0], "rounds": 10, "local_steps": 30, "cases": 8, "size": 32, "test_cases": 4},
}


def run_one(data: Path, method: str, seed: int, args) -> dict:
    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.config import PersonalConfig, build_train_config
    from fedsegnet.federation import run_federation

    sites = {f"site-{i}": data / f"site-{i}" for i in range(1, 5)}
    config = build_train_config(preset=args.preset, network="dca_unetr", local_steps=args.local_steps, seed=seed,
                                val_max_cases=2)  # fmt: skip
    personal = PersonalConfig(**PERSONAL[method], personal_steps=args.personal_steps)
    t0 = time.perf_counter()
    if method == "local_only":  # every site alone: a federation of one, no compression
        per_site, weights = {}, {}
        for site, folder in sites.items():
            r = run_federation({site: folder}, config, rounds=args.rounds, aggregation="mean", device="cpu", personal=personal)
            per_site.update(r["sites_test"])
            weights[site] = 1.0
    else:
        r = run_federation(sites, config, rounds=args.rounds, aggregation=args.aggregation, device="cpu", personal=personal,
                           codec=SparseQuantCodec() if args.compress else None)  # fmt: skip
        per_site = r["sites_test"]
        weights = {s: x.get("weight") for s, x in r["rounds"][-1]["sites"].items()}
    dice = [t["dice_mean"] for t in per_site.values() if t["dice_mean"] is not None]
    hd = [t["hd95_mean"] for t in per_site.values() if t["hd95_mean"] is not None]
    return {
        "method": method,
        "seed": seed,
        "dice": statistics.fmean(dice) if dice else None,
        "hd95": statistics.fmean(hd) if hd else None,
        "per_site": {s: {"dice": t["dice_mean"], "hd95": t["hd95_mean"],
                         "per_class": {n: c["dice"] for n, c in t["per_class"].items()}} for s, t in per_site.items()},  # fmt: skip
        "weights_last_round": weights,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def plot(rows: list[dict], path: str) -> Path:
    """Grouped bars: each site's Dice (x100, mean over seeds, with the seeds as dots) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fedsegnet.data.synth import HOSTS

    methods = [m for m in (*METHODS, *DIAGNOSTICS) if any(r["method"] == m for r in rows)]
    sites = sorted({s for r in rows for s in r["per_site"]})
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(methods), 3.6), dpi=120)
    width = 0.8 / max(len(sites), 1)
    for j, site in enumerate(sites):
        for i, method in enumerate(methods):
            vals = [100 * (r["per_site"][site]["dice"] or 0.0) for r in rows if r["method"] == method and site in r["per_site"]]
            x = i + (j - (len(sites) - 1) / 2) * width
            host = HOSTS[(int(site.split("-")[-1]) - 1) % len(HOSTS)]
            ax.bar(x, float(np.mean(vals)), width, color=f"C{j}", label=f"{site} ({host})" if i == 0 else None)
            ax.scatter([x] * len(vals), vals, s=6, color="black", zorder=3)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("Dice x100, own test split")
    ax.set_ylim(0, 100)
    ax.legend(ncol=len(sites), fontsize=8, loc="upper left")
    ax.set_title("each site's personalised model (bars: mean over seeds; dots: seeds)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def goals(summary: list[dict]) -> list[str]:
    """The issue's goals on the measured means (points = Dice x 100)."""
    m = {r["method"]: r for r in summary}
    lines = []
    if "dca_pbl" not in m:
        return lines
    top = m["dca_pbl"]["dice_mean"]
    for base in ("fedavg", "local_only"):
        if base in m:
            d = 100 * (top - m[base]["dice_mean"])
            lines.append(f"{'met   ' if d >= 3 else 'MISSED'} dca_pbl - {base} = {d:+.1f} pts (goal >= +3)")
    rivals = [k for k in ("finetune", "fedbn", "ditto") if k in m]
    if rivals:
        best = max(rivals, key=lambda k: m[k]["dice_mean"])
        d = 100 * (top - m[best]["dice_mean"])
        lines.append(f"{'met   ' if d >= 0 else 'MISSED'} dca_pbl - best of finetune/fedbn/ditto ({best}) = {d:+.1f} pts (goal >= 0)")
    if "dca" in m and m["dca"]["hd95_mean"] is not None and m["dca_pbl"]["hd95_mean"] is not None:
        d = m["dca_pbl"]["hd95_mean"] - m["dca"]["hd95_mean"]
        lines.append(f"{'met   ' if d < 0 else 'MISSED'} HD95 dca_pbl - dca = {d:+.2f} mm (goal < 0)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seed 0 at 32^3 (under 10 minutes on 2 CPU cores)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS} or the diagnostic {DIAGNOSTICS}")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--personal-steps", type=int, default=0, help="Ditto's and fine-tuning's steps (0 = local steps)")
    p.add_argument("--cases", type=int, help="cases per site (training + validation)")
    p.add_argument("--size", type=int, help="volume edge in voxels")
    p.add_argument("--test-cases", type=int, help="held-out test cases per site")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--aggregation", default="mean", choices=("mean", "aam", "median", "trimmed_mean"))
    p.add_argument("--compress", action="store_true", help="the job's compressed uplink (top-k + 4-bit, error feedback)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", help="keep the synthetic data here (default: a temporary folder)")
    p.add_argument("--json", help="write rows and the summary here (rewritten after every run)")
    p.add_argument("--figure", help="draw each site's Dice per method into this PNG")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="run nothing: summarise (and --figure) the rows of these earlier --json files")
    args = p.parse_args(argv)
    apply_size(args, SIZES["quick" if args.quick else "full"])
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in METHODS + DIAGNOSTICS]
    if bad:
        p.error(f"unknown method(s) {bad}; valid: {METHODS + DIAGNOSTICS}")

    if args.from_json:
        import json

        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())["rows"]]
        summary = summarize(rows, (*METHODS, *DIAGNOSTICS))
        write_results(args.json, args, rows, summary, goals(summary))
        if args.figure:
            print(f"figure: {plot(rows, args.figure)}")
        print_summary(summary, f"sites' own test splits, Dice (x100) and HD95, mean ± sd over seeds "
                      f"{sorted({r['seed'] for r in rows})} (from {', '.join(args.from_json)}):", goals(summary))  # fmt: skip
        return 0
    setup_torch(args.torch_threads)
    from tqdm.auto import tqdm

    from fedsegnet.data.synth import synthesize

    cells = [(seed, m) for seed in args.seeds for m in methods]
    print(
        f"methods {methods}; seeds {args.seeds}; organs scenario, 4 sites x {args.cases} cases ({args.size}^3) + "
        f"{args.test_cases} test cases each; preset {args.preset} with dca_unetr, {args.rounds} rounds x "
        f"{args.local_steps} steps, aggregation {args.aggregation}{', compressed uplink' if args.compress else ''}; "
        f"{len(cells)} runs",
        flush=True,
    )
    rows = []
    t0 = time.perf_counter()
    with work_root(args.workdir, "fedsegnet_personal_") as root:
        for seed, method in tqdm(cells, desc="runs", unit="run"):
            data = root / f"organs_s{seed}"
            if not (data / "site-4" / "dataset.json").exists():
                synthesize(data, sites=4, cases=args.cases, size=args.size, seed=seed, test_cases=args.test_cases,
                           scenario="organs")  # fmt: skip
            row = run_one(data, method, seed, args)
            rows.append(row)
            tqdm.write(f"seed {seed} {method:<10} Dice {100 * row['dice']:.1f}  HD95 {row['hd95']:.2f} mm  "
                       + " ".join(f"{s}:{100 * (v['dice'] or 0):.0f}" for s, v in row["per_site"].items())
                       + f"  ({row['seconds']} s)")  # fmt: skip
            summary = summarize(rows, (*METHODS, *DIAGNOSTICS))
            write_results(args.json, args, rows, summary, goals(summary))
    summary = summarize(rows, (*METHODS, *DIAGNOSTICS))
    if args.figure:
        print(f"figure: {plot(rows, args.figure)}")
    print_summary(summary, f"sites' own test splits, Dice (x100) and HD95, mean ± sd over seeds {args.seeds} "
                  f"({time.perf_counter() - t0:.0f} s):", goals(summary))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
