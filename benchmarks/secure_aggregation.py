"""Secure aggregation next to the plain compressed mode, in real ``nvflare simulator`` runs: held-out
Dice, bytes up and down per site and round, and time per round, side by side in one run.

Every run is ``jobs/fedsegnet`` as it ships (AAM, the codec both ways), configured with job args only
(:func:`~fedsegnet.flare.ops.jobs.configure_job`) and run by
:func:`compression.run_one` (the compression benchmark's runner: same synthetic sites per seed,
FLARE's cross-site evaluation left out, bytes from the round records that the server's
``MessageBytes`` filters fill, held-out Dice of ``FL_global_model.pt`` on ``<data>/test`` with
``fedsegnet eval``'s code). The methods:

- ``plain``: the job's default: AAM weights, each site's own top-k (``up_ratio`` 0.1, ``up_bits`` 4)
  with error feedback; the server decodes every update;
- ``plain_mean``: the same with ``aggregation=mean`` (sample-count weights, what secure aggregation
  uses), so the compression's cost can be told from AAM's;
- ``secagg``: ``secure_aggregation=true``: four exchanges per round, the server learns only the
  weighted sum; the uplink is the round's plan (one support of whole blocks for every site, chosen
  from the previous round's summed block scores; 4-bit values in the fewest ring bits; round 0 16-bit
  values on random blocks), the downlink the same codec as ``plain``.

Bytes up and down are FLARE's serialized messages of one site in one round (all four exchanges under
secure aggregation), means over rounds, sites and seeds; ``up vs plain`` is the ratio of the uplink
means (the goal: at most 1.5), ``dDice`` the difference in held-out Dice points from ``plain`` (the
goal: within 1). ``s/round``: the simulator's wall time of the run divided by the rounds (training
included; the secure rounds add three exchanges, each waiting for FLARE's task polling).

    python benchmarks/secure_aggregation.py --quick                  # 2 sites, 1 seed, 4 rounds
    python benchmarks/secure_aggregation.py --sites 2,8 --json secure_aggregation.json --markdown secure_aggregation.md
    python benchmarks/secure_aggregation.py --sites 2 --seeds 0,1,2 --methods plain,secagg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compression

METHODS = {
    "plain": {"kind": "ours", "args": {}},
    "plain_mean": {"kind": "ours", "args": {"aggregation": "mean"}},
    "secagg": {"kind": "ours", "args": {"secure_aggregation": True}},
}
REFERENCE = "plain"
PROFILES = {
    "full": {"seeds": [0, 1, 2], "rounds": 10, "local_steps": 30, "cases": 8, "size": 40, "test_cases": 6},
    "quick": {"seeds": [0], "rounds": 4, "local_steps": 10, "cases": 4, "size": 32, "test_cases": 3},
}


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(sites: int, name: str, runs: list[dict], reference: dict | None) -> dict:
    """One row per (sites, method) from its runs (one per seed)."""
    ok = [r for r in runs if r["ok"]]
    dice, dice_sd = _stats([r["dice"] for r in ok])
    up, _ = _stats([r["bytes_up"] for r in ok])
    down, _ = _stats([r["bytes_down"] for r in ok])
    down_after, _ = _stats([r["bytes_down_after_first"] for r in ok])
    per_round, _ = _stats([r["seconds"] / r["rounds_recorded"] for r in ok if r["rounds_recorded"]])
    row = {
        "sites": sites, "method": name, "seeds": [r["seed"] for r in ok], "dice": dice, "dice_sd": dice_sd,
        "dice_per_seed": {r["seed"]: r["dice"] for r in ok}, "bytes_up": up, "bytes_down": down,
        "bytes_down_after_first": down_after, "seconds_per_round": per_round,
        "failed": [{k: r.get(k) for k in ("seed", "rc", "error", "log", "log_error")} for r in runs if not r["ok"]],
    }  # fmt: skip
    if reference and reference["bytes_up"] and up:
        row["up_vs_plain"] = up / reference["bytes_up"]
        row["down_vs_plain"] = down / reference["bytes_down"] if reference["bytes_down"] else None
    if reference and reference["dice"] is not None and dice is not None:
        common = [s for s in row["dice_per_seed"] if s in reference["dice_per_seed"]]
        row["ddice_points"] = 100 * statistics.fmean(row["dice_per_seed"][s] - reference["dice_per_seed"][s] for s in common) if common else None
    return row


def _fmt(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


HEADER = ("sites", "method", "Dice (mean ± sd)", "dDice pts", "up B/round", "up vs plain", "down B/round", "down r>=1", "s/round")


def _cells(r: dict) -> tuple:
    dice = "-" if r["dice"] is None else f"{r['dice']:.3f} ± {r['dice_sd']:.3f}"
    return (
        str(r["sites"]), r["method"], dice, _fmt(r.get("ddice_points"), "+.1f"), _fmt(r["bytes_up"]),
        _fmt(r.get("up_vs_plain"), ".2f") + ("x" if r.get("up_vs_plain") else ""), _fmt(r["bytes_down"]),
        _fmt(r["bytes_down_after_first"]), _fmt(r["seconds_per_round"], ".1f"),
    )  # fmt: skip


def table_text(rows: list[dict]) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) for i in range(len(HEADER))) for c in cells)


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(_cells(r)) + " |" for r in rows])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)} (default: all; {REFERENCE} always runs)")
    p.add_argument("--sites", default="2", help="comma-separated site counts (default 2; e.g. 2,8)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 rounds x 10 steps, 4 cases of 32^3 per site")
    p.add_argument("--rounds", type=int, help="default 10 (quick: 4)")
    p.add_argument("--local-steps", type=int, help="default 30 (quick: 10)")
    p.add_argument("--cases", type=int, help="training cases per site (default 8; quick: 4)")
    p.add_argument("--size", type=int, help="volume edge in voxels (default 40; quick: 32)")
    p.add_argument("--test-cases", type=int, help="held-out test cases (default 6; quick: 3)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per site (default 1)")
    p.add_argument("--val-max-cases", type=int, default=2, help="validation cases per site evaluation (default 2)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per simulator run (default 3600)")
    p.add_argument("--workdir", help="data, jobs, workspaces and logs (default: a new temporary folder)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--markdown", help="write the table as markdown here")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    seeds = compression.apply_profile(p, args, PROFILES)
    try:
        site_counts = [int(s) for s in args.sites.split(",")]
    except ValueError:
        p.error(f"--sites={args.sites!r}: expected comma-separated integers, e.g. 2,8")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (valid: {', '.join(METHODS)})")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    if any(n < 2 for n in site_counts) or args.rounds < 1:
        p.error("--sites must be >= 2 (secure aggregation needs two sites) and --rounds >= 1")
    compression.METHODS.update(METHODS)  # run_one looks the method up there
    args.cross_site = False

    from fedsegnet.data.synth import synthesize

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedsegnet-secagg-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"methods {', '.join(names)}; sites {site_counts}; seeds {seeds}; {args.cases} cases per site "
        f"({args.size}^3), {args.test_cases} held-out test cases; preset {args.preset}, {args.rounds} rounds x "
        f"{args.local_steps} steps; workdir {work}",
        flush=True,
    )
    t_start = time.perf_counter()
    rows = []
    for n in site_counts:
        args.sites = n
        runs: dict[str, list[dict]] = {m: [] for m in names}
        for seed in seeds:
            data_root = work / "data" / f"sites{n}_seed{seed}"
            if not (data_root / "test" / "dataset.json").exists():
                synthesize(data_root, sites=n, cases=args.cases, size=args.size, seed=seed, test_cases=args.test_cases)
            for m in names:
                r = compression.run_one(m, seed, data_root, work / "runs" / f"sites{n}" / f"seed{seed}" / m, args)
                runs[m].append(r)
                if r["ok"]:
                    print(
                        f"  {n} sites seed {seed} {m:<10} Dice {r['dice']:.3f}, up {r['bytes_up']:,.0f} B, down "
                        f"{r['bytes_down']:,.0f} B per site and round, {r['seconds'] / max(r['rounds_recorded'], 1):.1f} s/round",
                        flush=True,
                    )
                else:
                    print(f"  {n} sites seed {seed} {m:<10} FAILED: {r['error']}; log {r['log']}", flush=True)
                    if r["log_error"]:
                        print(f"      first error in the log: {r['log_error']}", flush=True)
        reference = summarize(n, REFERENCE, runs[REFERENCE], None)
        rows += [reference] + [summarize(n, m, runs[m], reference) for m in names if m != REFERENCE]
    print()
    print(
        f"held-out Dice: mean ± sd over seeds {seeds}; dDice: points vs {REFERENCE} on the same seeds; bytes: "
        "serialized FLARE messages of one site in one round (all four exchanges under secure aggregation); "
        "'down r>=1' leaves out round 0's full model"
    )
    print(table_text(rows))
    for r in rows:
        if r["method"] == "secagg" and r.get("up_vs_plain") is not None and r.get("ddice_points") is not None:
            up_ok, dice_ok = r["up_vs_plain"] <= 1.5, abs(r["ddice_points"]) <= 1
            print(
                f"goal at {r['sites']} sites: uplink {r['up_vs_plain']:.2f}x plain (<= 1.5x: {'met' if up_ok else 'MISSED'}), "
                f"Dice {r['ddice_points']:+.1f} points (within 1: {'met' if dice_ok else 'MISSED'})"
            )
    print(f"total time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "workdir"}, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table_markdown(rows) + "\n")
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
