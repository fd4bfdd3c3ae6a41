"""Aggregation benchmark: AAM against FedAvg, FedProx, coordinate-wise median and trimmed mean.

4 synthetic sites, held-out clean test set (never trained on), seeds x scenarios x methods:

* ``iid``: four sites drawn from one distribution;
* ``noniid``: intensity (scanner gain/offset) and structure-size shifts between sites;
* ``corrupt``: the ``iid`` data, but site-4's labels carry structure-level annotation errors with
  probability 0.5 (``label_noise:0.5``: each lesion missed, each nodule marked as lesion, each bowel
  blob marked as organ with probability 0.5);
* ``byzantine``: the ``iid`` data, site-4 sends its update scaled x10;
* ``byzantine_random``: the ``iid`` data, site-4 sends Gaussian noise of its update's scale (each
  tensor's own standard deviation: an ordinary norm, a random direction);
* ``iid_2sites`` / ``byzantine_2sites``: only site-1 and site-2 of the ``iid`` data (two sites, the
  default ``min_clients`` of the jobs), clean / site-2 sending its update x10;
* ``corrupt_shift`` (with ``--scenarios all``): the ``iid`` data, but site-4's labels are
  misregistered by 6 voxels along x in every case (a systematic label error).

Methods: ``fedavg`` (sample-count weights), ``aam``, ``fedprox`` (FedAvg weights, FLARE's
``PTFedProxLoss`` at the sites, ``--fedprox-mu``), ``median``, ``trimmed_mean`` (beta 0.25). Every
method sends the same compressed updates as ``jobs/fedsegnet`` (top-10%, 4-bit, error feedback)
and goes through the job's server round (:class:`fedsegnet.aggregation.ServerRound`: the same gate
for every method, then its rule).

The runs use :func:`fedsegnet.federation.run_federation`: the sites' ``SiteTrainer`` and the
server's aggregation code in one process (no FLARE messaging; 60 simulator runs would spend most
of their time starting processes). The FLARE wiring is covered by the simulator tests.

Seed ``s`` makes the data with ``synthesize(seed=s)`` and trains with ``seed=s``. Dice is the mean
over foreground classes (organ, lesion) on the test set; the table gives mean ± sd over seeds.

Re-run:
    python benchmarks/aggregation.py --quick --json docs/results/aggregation_quick.json
    python benchmarks/aggregation.py --json docs/results/aggregation.json --markdown docs/results/aggregation.md

Runs split over several invocations (e.g. one per seed) are put into one table with
``--tables-from a.json b.json ... --json docs/results/aggregation.json --markdown docs/results/aggregation.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import apply_size, setup_torch, work_root

SCENARIOS = ("iid", "noniid", "corrupt", "byzantine", "byzantine_random", "iid_2sites", "byzantine_2sites", "corrupt_shift")
DEFAULT_SCENARIOS = ("iid", "noniid", "corrupt", "byzantine", "byzantine_random", "iid_2sites", "byzantine_2sites")
TWO_SITES = {"iid_2sites": None, "byzantine_2sites": "site-2"}
"""Two-site scenarios: the faulty site (x10), if any."""
METHODS = ("fedavg", "aam", "fedprox", "median", "trimmed_mean")
AGGREGATION_OF = {"fedavg": "mean", "fedprox": "mean"}
"""Benchmark methods that run a server-round method under another name; the others are their own."""
SIZES = {
    "full": {"seeds": [0, 1, 2], "rounds": 8, "local_steps": 30, "cases": 8, "size": 48, "test_cases": 6},
    "quick": {"seeds": [0], "rounds": 5, "local_steps": 20, "cases": 6, "size": 40, "test_cases": 4},
}
NONIID_STYLES = {
    "site-2": {"intensity_scale": 1.4, "intensity_shift": 0.15},
    "site-3": {"structure_scale": 0.7},
    "site-4": {"intensity_scale": 0.7, "structure_scale": 1.3},
}
FAULTY_SITE = "site-4"


def make_data(root: Path, scenario: str, seed: int, args) -> Path:
    """Synthesize (once per data variant and seed) and return the data folder."""
    from fedsegnet.data.synth import synthesize

    variant = {"noniid": "noniid", "corrupt": "corrupt", "corrupt_shift": "corrupt_shift"}.get(scenario, "iid")
    out = root / f"{variant}_s{seed}"
    if (out / "test" / "dataset.json").exists():
        return out
    kwargs = dict(sites=4, cases=args.cases, size=args.size, seed=seed, test_cases=args.test_cases)
    if variant == "noniid":
        kwargs.update(site_styles=NONIID_STYLES)
    else:
        kwargs.update(vary_sites=False)
    if variant == "corrupt":
        kwargs.update(corrupt=[(FAULTY_SITE, "label_noise", 0.5)])
    elif variant == "corrupt_shift":
        kwargs.update(corrupt=[(FAULTY_SITE, "shift", 6)])
    synthesize(out, **kwargs)
    return out


def run_one(data: Path, scenario: str, method: str, seed: int, args) -> dict:
    from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.config import build_train_config
    from fedsegnet.aggregation import AdaptiveAggregation
    from fedsegnet.federation import run_federation

    config = build_train_config(preset=args.preset, local_steps=args.local_steps, seed=seed, val_max_cases=2)
    faults = {}
    if scenario == "byzantine":
        faults = {FAULTY_SITE: "scale"}
    elif scenario == "byzantine_random":
        faults = {FAULTY_SITE: "random"}
    elif TWO_SITES.get(scenario):
        faults = {TWO_SITES[scenario]: "scale"}
    n_sites = 2 if scenario in TWO_SITES else 4
    watched = TWO_SITES.get(scenario) or (FAULTY_SITE if n_sites == 4 else "site-2")
    aggregation = AGGREGATION_OF.get(method, method)  # a name of fedsegnet.aggregation.METHODS
    result = run_federation(
        {f"site-{i}": data / f"site-{i}" for i in range(1, n_sites + 1)},
        config,
        rounds=args.rounds,
        test_dir=data / "test",
        aggregation=aggregation,
        codec=SparseQuantCodec(),
        proximal_loss=PTFedProxLoss(mu=args.fedprox_mu) if method == "fedprox" else None,
        faults=faults,
        device="cpu",
        aam=AdaptiveAggregation(max_norm_ratio=args.max_norm_ratio, **{k: v for k, v in (("temperature", args.aam_temperature),
                                ("margin", args.aam_margin)) if v is not None}),  # fmt: skip
    )
    test = result["test"]
    row = {
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "dice": test["dice_mean"],
        "per_class": {name: c["dice"] for name, c in test["per_class"].items()},
        "seconds": round(result["seconds"], 1),
    }
    row["watched_site"] = watched
    if method == "aam":
        weights = [r["sites"][watched].get("weight") for r in result["rounds"]]
        row["site4_weight_mean"] = statistics.fmean(w for w in weights if w is not None) if any(w is not None for w in weights) else None
        row["weights_last_round"] = {s: r.get("weight") for s, r in result["rounds"][-1]["sites"].items()}
        row["gate_last_round"] = {s: r.get("gate") for s, r in result["rounds"][-1]["sites"].items()}
        row["signals_by_round"] = [
            {s: {k: r.get(k) for k in ("weight", "cos_dist", "norm_ratio", "quality", "val_dice_local")} for s, r in rec["sites"].items()}
            for rec in result["rounds"]
        ]
    return row


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["scenario"], r["method"]) for r in rows}, key=lambda k: (SCENARIOS.index(k[0]), METHODS.index(k[1])))
    for scenario, method in keys:
        cell = sorted((r for r in rows if r["scenario"] == scenario and r["method"] == method and r["dice"] is not None),
                      key=lambda r: r["seed"])  # fmt: skip
        d = [r["dice"] for r in cell]
        out.append({
            "scenario": scenario, "method": method, "dice_mean": statistics.fmean(d) if d else None,
            "dice_sd": statistics.stdev(d) if len(d) > 1 else 0.0, "n_seeds": len(d),
            "seed_list": ",".join(str(r["seed"]) for r in cell),
            "per_seed": {str(r["seed"]): r["dice"] for r in cell},
        })  # fmt: skip
    return out


def goals(summary: list[dict]) -> list[str]:
    """The goals, checked on the measured means (points = Dice x 100). Two cells are compared on the
    seeds both were run on (a cell on other seeds holds other data); a line says which seeds when
    that is not every seed of both cells."""
    cells = {(r["scenario"], r["method"]): r for r in summary if r["dice_mean"] is not None}
    lines = []

    def diff(a, b):
        """(points, note): mean over common seeds of cell a - cell b, or (None, note)."""
        sa, sb = cells[a].get("per_seed") or {}, cells[b].get("per_seed") or {}
        common = sorted(set(sa) & set(sb), key=int)
        if not common:
            return None, " (no seed in common)"
        note = f" [seeds {','.join(common)} only]" if len(common) < max(len(sa), len(sb)) else ""
        return 100 * statistics.fmean(sa[k] - sb[k] for k in common), note

    def check(a, b, test, text):
        d, note = diff(a, b)
        if d is None:
            lines.append("n/a    " + text.split(" = ")[0] + note)
        else:
            lines.append(("met    " if test(d) else "MISSED ") + text.format(d=d) + note)

    for sc in ("corrupt", "corrupt_shift"):
        if (sc, "aam") in cells and (sc, "fedavg") in cells:
            check((sc, "aam"), (sc, "fedavg"), lambda d: d >= 5, f"(c) {sc}: AAM - FedAvg = {{d:+.1f}} pts (goal >= +5)")
            if ("iid", "fedavg") in cells:
                lost, note = diff((sc, "fedavg"), ("iid", "fedavg"))
                if lost is not None:
                    lines.append(f"        {sc}: FedAvg - FedAvg(iid) = {lost:+.1f} pts (what the corruption costs FedAvg){note}")
    for byz, clean in (("byzantine", "iid"), ("byzantine_random", "iid"), ("byzantine_2sites", "iid_2sites")):
        if (byz, "aam") in cells and (clean, "aam") in cells:
            check((byz, "aam"), (clean, "aam"), lambda d: abs(d) <= 2, f"(d) {byz}: AAM - AAM({clean}) = {{d:+.1f}} pts (goal within 2)")
        if (byz, "fedavg") in cells and (clean, "fedavg") in cells:
            check((byz, "fedavg"), (clean, "fedavg"), lambda d: d < -2, f"(d) {byz}: FedAvg - FedAvg({clean}) = {{d:+.1f}} pts (FedAvg degrades)")
    for sc in ("iid", "noniid"):
        if (sc, "aam") in cells and (sc, "fedavg") in cells:
            tag = "a" if sc == "iid" else "b"
            check((sc, "aam"), (sc, "fedavg"), lambda d: d >= -0.5, f"({tag}) {sc}: AAM - FedAvg = {{d:+.1f}} pts (goal >= -0.5)")
    for sc in SCENARIOS:
        robust = [(sc, r) for r in ("median", "trimmed_mean") if (sc, r) in cells]
        if robust and (sc, "aam") in cells:
            best = max(robust, key=lambda k: cells[k]["dice_mean"])
            check((sc, "aam"), best, lambda d: d >= 0, f"{sc}: AAM - best robust baseline ({best[1]}) = {{d:+.1f}} pts (goal >= 0)")
    return lines


def markdown(summary: list[dict], args, goal_lines: list[str]) -> str:
    methods = [mt for mt in METHODS if any(r["method"] == mt for r in summary)]
    scenarios = [sc for sc in SCENARIOS if any(r["scenario"] == sc for r in summary)]
    m = {(r["scenario"], r["method"]): r for r in summary}
    head = (
        f"4 sites (2 in the *_2sites scenarios), {args.rounds} rounds x {args.local_steps} local steps, preset {args.preset}, {args.cases} cases per "
        f"site ({args.size}^3), {args.test_cases} held-out test cases, seeds {args.seeds}. Dice (x100): mean ± sd "
        "over seeds on the held-out test set.\n\n"
    )
    lines = ["| scenario | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for sc in scenarios:
        cells = []
        for mt in methods:
            r = m.get((sc, mt))
            if r is None or r["dice_mean"] is None:
                cells.append("")
                continue
            cell = f"{100 * r['dice_mean']:.1f}" + ("" if r["n_seeds"] == 1 else f" ± {100 * r['dice_sd']:.1f}")
            if r["n_seeds"] != len(args.seeds):  # a cell measured on fewer seeds says so
                cell += f" ({r['n_seeds']} seed{'s' if r['n_seeds'] > 1 else ''}: {r['seed_list']})"
            cells.append(cell)
        lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n\nGoals:\n\n" + "\n".join(f"- {g}" for g in goal_lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 5 rounds x 20 steps, smaller data (under 10 minutes)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"comma list of {SCENARIOS} or 'all'")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--cases", type=int, help="cases per site")
    p.add_argument("--size", type=int, help="volume edge in voxels")
    p.add_argument("--test-cases", type=int)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--fedprox-mu", type=float, default=0.01)
    p.add_argument("--aam-temperature", type=float, default=None,
                   help="AAM's softmax temperature, the job arg aam_temperature (default: AdaptiveAggregation's)")
    p.add_argument("--aam-margin", type=float, default=None,
                   help="AAM's tolerated shortfall of quality and performance below the median (default: AdaptiveAggregation's)")
    p.add_argument("--max-norm-ratio", type=float, default=10.0,
                   help="the gate drops updates above this many times the reference norm (the job's default: 10)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", help="keep the synthetic data here (default: a temporary folder)")
    p.add_argument("--json", help="write rows and the summary here (rewritten after every run)")
    p.add_argument(
        "--resume", help="a previous --json of this benchmark: its rows are kept and those runs skipped "
        "(only valid when the code of those methods has not changed since)",
    )  # fmt: skip
    p.add_argument("--markdown", help="write the table here")
    p.add_argument(
        "--tables-from", nargs="+", metavar="JSON", help="run nothing: build the table from the rows of earlier --json "
        "files of this benchmark (runs split over several invocations); cells on fewer seeds than --seeds say so",
    )  # fmt: skip
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    explicit = {k: any(a == f"--{k}" or a.startswith(f"--{k}=") for a in given) for k in ("scenarios", "methods", "seeds")}
    apply_size(args, SIZES["quick" if args.quick else "full"])
    if args.tables_from:
        rows = [r for f in args.tables_from for r in json.loads(Path(f).read_text())["rows"]]
        seen = {}
        for r in rows:  # one row per (seed, scenario, method): the last file wins
            seen[r["seed"], r["scenario"], r["method"]] = r
        rows = list(seen.values())
        if explicit["scenarios"] and args.scenarios != "all":  # only the cells asked for
            rows = [r for r in rows if r["scenario"] in args.scenarios.split(",")]
        if explicit["methods"]:
            rows = [r for r in rows if r["method"] in args.methods.split(",")]
        if explicit["seeds"]:
            rows = [r for r in rows if r["seed"] in args.seeds]
        args.seeds = sorted({r["seed"] for r in rows})
        summary = summarize(rows)
        goal_lines = goals(summary)
        table = markdown(summary, args, goal_lines)
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "config": {k: getattr(args, k) for k in ("rounds", "local_steps", "cases", "size", "test_cases", "preset", "seeds", "fedprox_mu")},
                "sources": [Path(s).name for s in args.tables_from], "summary": summary, "goals": goal_lines, "rows": rows,
            }, indent=1))  # fmt: skip
        if args.markdown:
            Path(args.markdown).write_text(table)
        return 0
    scenarios = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    methods = args.methods.split(",")
    bad = [s for s in scenarios if s not in SCENARIOS] + [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown scenario/method {bad}; scenarios {SCENARIOS}, methods {METHODS}")

    setup_torch(args.torch_threads)
    from tqdm.auto import tqdm

    cells = [(seed, sc, mt) for seed in args.seeds for sc in scenarios for mt in methods]
    print(
        f"scenarios {scenarios}; methods {methods}; seeds {args.seeds}; 4 sites x {args.cases} cases ({args.size}^3), "
        f"{args.test_cases} test cases; preset {args.preset}, {args.rounds} rounds x {args.local_steps} steps; "
        f"{len(cells)} runs",
        flush=True,
    )
    rows = []
    if args.resume:
        kept = json.loads(Path(args.resume).read_text())["rows"]
        rows = [r for r in kept if (r["seed"], r["scenario"], r["method"]) in set(cells)]
        done = {(r["seed"], r["scenario"], r["method"]) for r in rows}
        cells = [c for c in cells if c not in done]
        print(f"resumed {len(rows)} run(s) from {args.resume}; {len(cells)} to go", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(cells, desc="runs", file=sys.stdout, dynamic_ncols=True, disable=None)  # a bar on a terminal only
    with work_root(args.workdir, "fedsegnet_aggbench_") as root:
        for seed, sc, mt in bar:
            bar.set_postfix_str(f"{sc}/{mt}/s{seed}")
            data = make_data(root, sc, seed, args)
            row = run_one(data, sc, mt, seed, args)
            rows.append(row)
            extra = f" site-4 weight {row['site4_weight_mean']:.3f}" if row.get("site4_weight_mean") is not None else ""
            extra = extra.replace("site-4", row["watched_site"])
            bar.write(f"{sc:>16} {mt:>12} seed {seed}: Dice {100 * row['dice']:.1f} ({row['seconds']:.0f} s){extra}")
            if args.json:  # keep what is done if the run is stopped
                Path(args.json).write_text(json.dumps({"rows": rows, "summary": summarize(rows)}, indent=1))
    bar.close()
    summary = summarize(rows)
    goal_lines = goals(summary)
    table = markdown(summary, args, goal_lines)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": {k: getattr(args, k) for k in ("rounds", "local_steps", "cases", "size", "test_cases", "preset", "seeds", "fedprox_mu")},
            "summary": summary, "goals": goal_lines, "rows": rows,
        }, indent=1))  # fmt: skip
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
