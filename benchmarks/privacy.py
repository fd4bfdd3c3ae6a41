"""Privacy benchmark: held-out Dice against epsilon, a membership-inference audit, and the cost of a DP step.

Three parts, each printing what it measured:

* ``dice``: synthetic sites with ``--cases`` training cases each (default 100: DP needs many privacy
  units), the ``jobs/fedsegnet`` path in one process (:func:`fedsegnet.federation.run_federation`:
  the sites' ``SiteTrainer`` with ``dp='patient'``, AAM behind the gate, top-10% 4-bit updates with
  error feedback), epsilon in ``--epsilons`` (``inf`` = no DP) at ``--delta``, seeds x epsilons.
  The noise is chosen per site so that its planned ``rounds x local_steps`` spend exactly the
  target (``dp_target_epsilon``). Dice is on a held-out test set no site trained on.
* ``audit`` (same runs): a per-case Dice threshold membership-inference attack on the final global
  model: the attacker scores every site's training cases (members) and the same sites' validation
  cases (non-members: drawn by the same generator, never trained on) and guesses "member" above a
  threshold; the AUC over all thresholds is reported (0.5 = no better than chance; the AUC against
  the separate test set is kept as ``auc_vs_test_set``). For (epsilon, delta)-DP any attack's TPR
  <= e^epsilon FPR + delta.
* ``cost``: one DP-SGD step (:class:`fedsegnet.privacy.PrivateTraining`) against one plain step
  (:func:`fedsegnet.training.loop.train_steps`) on the same network, crops and batch, alternated
  in one run; the ratio of medians.

Re-run:
    python benchmarks/privacy.py --quick --json docs/results/privacy_quick.json
    python benchmarks/privacy.py --json docs/results/privacy.json --markdown docs/results/privacy.md

Seeds run as separate invocations (``--seeds 0 --json s0.json``, ...) are put into one table with
``--tables-from s0.json s1.json s2.json --json docs/results/privacy.json --markdown docs/results/privacy.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from _common import apply_size, setup_torch, work_root

SIZES = {
    "full": {"seeds": [0, 1, 2], "rounds": 8, "local_steps": 30, "cases": 100, "size": 24, "test_cases": 40, "sites": 2,
             "cases_per_step": 8, "cost_steps": 10},
    "quick": {"seeds": [0], "rounds": 2, "local_steps": 4, "cases": 12, "size": 24, "test_cases": 6, "sites": 2,
              "cases_per_step": 4, "cost_steps": 3},
}  # fmt: skip
VAL_FRACTION = 0.2


def train_config(args, seed: int):
    """The tiny preset at 16^3 crops with ``cases_per_step`` cases per step (2 crops each)."""
    from fedsegnet.config import build_train_config

    return build_train_config(
        preset="tiny", local_steps=args.local_steps, seed=seed, val_max_cases=4, patch_size=16,
        batch_size=2 * args.cases_per_step, amp=False, num_workers=0,
    )  # fmt: skip


def make_data(root: Path, seed: int, args) -> Path:
    from fedsegnet.data.synth import synthesize

    out = root / f"sites_s{seed}"
    if not (out / "test" / "dataset.json").exists():
        total = math.ceil(args.cases / (1 - VAL_FRACTION))  # `cases` training cases after the validation split
        synthesize(out, sites=args.sites, cases=total, size=args.size, seed=seed, test_cases=args.test_cases,
                   val_fraction=VAL_FRACTION, vary_sites=False)  # fmt: skip
    return out


def case_dice(weights: dict, folder: Path, split: str, config) -> list[float]:
    """Mean foreground Dice of ``weights`` on every case of ``folder``'s ``split``, one value per case."""
    from fedsegnet.data.datalist import load_datalist
    from fedsegnet.data.transforms import build_eval_dataset
    from fedsegnet.training.evaluate import evaluate
    from fedsegnet.training.site import build_model_for, eval_cases, site_label_map

    datalist = load_datalist(folder)
    label_map = site_label_map(datalist, config.preset)
    cases = datalist.evaluable(split)
    model = build_model_for(config, datalist.in_channels, datalist.num_classes)
    model.load_state_dict({k: __import__("torch").as_tensor(v) for k, v in weights.items()})
    p = config.preset
    result = evaluate(
        model, eval_cases(cases, build_eval_dataset(cases, p, label_map=label_map)), num_classes=datalist.num_classes,
        roi_size=p.patch_size, sw_batch_size=p.sw_batch_size, overlap=p.sw_overlap, device="cpu", amp=False,
        class_names=label_map.class_names,
    )  # fmt: skip
    scores = []
    for case in result.per_case:
        values = [v for k, v in case["dice"].items() if int(k) != 0 and v is not None and math.isfinite(v)]
        scores.append(statistics.fmean(values) if values else 0.0)
    return scores


def auc(members: list[float], others: list[float]) -> float:
    """P(a member's score > a non-member's) + P(tie) / 2: the area under the attack's ROC curve."""
    wins = sum((m > o) + 0.5 * (m == o) for m in members for o in others)
    return wins / (len(members) * len(others))


def tpr_at_fpr(members: list[float], others: list[float], fpr: float = 0.1) -> float:
    """The attack's true-positive rate at the threshold that flags at most ``fpr`` of the non-members."""
    ranked = sorted(others, reverse=True)
    k = int(math.floor(fpr * len(ranked)))
    threshold = ranked[k] if k < len(ranked) else -math.inf  # flag scores strictly above it
    return sum(m > threshold for m in members) / len(members)


def run_one(data: Path, epsilon: float, seed: int, args) -> dict:
    from fedsegnet.aggregation import AdaptiveAggregation
    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.federation import run_federation
    from fedsegnet.privacy import DPSettings

    config = train_config(args, seed)
    dp = None if math.isinf(epsilon) else DPSettings(mode="patient", target_epsilon=epsilon, delta=args.delta, clip=args.clip)
    sites = {f"site-{i}": data / f"site-{i}" for i in range(1, args.sites + 1)}
    result = run_federation(sites, config, rounds=args.rounds, test_dir=data / "test", aggregation="aam",
                            codec=SparseQuantCodec(), device="cpu", dp=dp, aam=AdaptiveAggregation())  # fmt: skip
    weights = result["final_weights"]
    members = [d for folder in sites.values() for d in case_dice(weights, folder, "training", config)]
    # non-members from the same sites' generators: their validation cases (never trained on)
    others = [d for folder in sites.values() for d in case_dice(weights, folder, "validation", config)]
    held_out = case_dice(weights, data / "test", "test", config)
    last = result["rounds"][-1]["sites"]
    spent = {s: (r.get("dp") or {}).get("epsilon") for s, r in last.items()}
    noise = {s: (r.get("dp") or {}).get("noise_multiplier") for s, r in last.items()}
    return {
        "epsilon_target": None if math.isinf(epsilon) else epsilon, "seed": seed, "dice": result["test"]["dice_mean"],
        "per_class": {n: c["dice"] for n, c in result["test"]["per_class"].items()},
        "epsilon_spent": spent, "noise_multiplier": noise,
        "sample_rate": {s: (r.get("dp") or {}).get("sample_rate") for s, r in last.items()},
        "audit": {"auc": auc(members, others), "tpr_at_fpr_0.1": tpr_at_fpr(members, others, 0.1),
                  "members": len(members), "non_members": len(others),
                  "member_dice_mean": statistics.fmean(members), "non_member_dice_mean": statistics.fmean(others),
                  "auc_vs_test_set": auc(members, held_out)},
        "seconds": round(result["seconds"], 1),
    }  # fmt: skip


def measure_cost(args) -> dict:
    """Median seconds of a plain step and a DP step on the same network, crops and batch, alternated."""
    import torch

    from fedsegnet.data.transforms import crops_per_volume
    from fedsegnet.privacy import DPSettings, PrivateTraining
    from fedsegnet.training.losses import build_loss
    from fedsegnet.training.loop import make_optimizer, train_steps
    from fedsegnet.training.site import build_model_for

    config = train_config(args, 0)
    p = config.preset
    k = crops_per_volume(p)
    n_cases = args.cases_per_step
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(n_cases * k, 1, *p.patch_size, generator=g),
             "label": torch.randint(0, 3, (n_cases * k, 1, *p.patch_size), generator=g).float()}  # fmt: skip
    loss_fn = build_loss("dice_ce")
    plain = build_model_for(config, 1, 3)
    private_model = build_model_for(config, 1, 3)
    plain_opt = make_optimizer(plain, lr=p.lr, weight_decay=p.weight_decay)
    private = PrivateTraining(
        private_model, make_optimizer(private_model, lr=p.lr, weight_decay=p.weight_decay),
        DPSettings(mode="patient", noise=1.0), n_cases=args.cases, cases_per_step=n_cases, crops_per_case=k,
        planned_steps=1, loss_fn=loss_fn,
    )  # fmt: skip
    times = {"plain": [], "dp": []}
    for i in range(args.cost_steps + 1):  # the first of each warms up and is dropped
        t = time.perf_counter()
        train_steps(plain, [batch], steps=1, optimizer=plain_opt, loss_fn=loss_fn, device="cpu")
        if i:
            times["plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        private.step(batch)
        if i:
            times["dp"].append(time.perf_counter() - t)
    plain_s, dp_s = statistics.median(times["plain"]), statistics.median(times["dp"])
    return {"network": p.network, "crops": n_cases * k, "cases": n_cases, "patch": list(p.patch_size),
            "torch_threads": torch.get_num_threads(), "plain_step_s": plain_s, "dp_step_s": dp_s, "ratio": dp_s / plain_s,
            "steps_timed": args.cost_steps}  # fmt: skip


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for target in sorted({r["epsilon_target"] for r in rows}, key=lambda e: math.inf if e is None else e):
        mine = sorted((r for r in rows if r["epsilon_target"] == target), key=lambda r: r["seed"])
        d = [r["dice"] for r in mine]
        a = [r["audit"]["auc"] for r in mine]
        spent = [e for r in mine for e in r["epsilon_spent"].values() if e is not None]
        out.append({
            "epsilon_target": target, "n_seeds": len(mine), "seeds": [r["seed"] for r in mine],
            "dice_mean": statistics.fmean(d), "dice_sd": statistics.stdev(d) if len(d) > 1 else 0.0,
            "auc_mean": statistics.fmean(a), "auc_sd": statistics.stdev(a) if len(a) > 1 else 0.0,
            "auc_max": max(a), "epsilon_spent_max": max(spent) if spent else None,
            "noise_multiplier": sorted({round(v, 4) for r in mine for v in r["noise_multiplier"].values() if v is not None}),
        })  # fmt: skip
    return out


def goals(summary: list[dict], cost: dict | None) -> list[str]:
    cells = {r["epsilon_target"]: r for r in summary}
    lines = []
    base = cells.get(None)
    if base and base["dice_mean"] < 0.5:
        lines.append(f"NOTE   the non-private model reaches only Dice {100 * base['dice_mean']:.1f}: it has hardly learned, "
                     "so the Dice and audit comparisons below say little (train longer)")  # fmt: skip
    for eps, limit, tag in ((8.0, 5.0, "goal"), (3.0, 3.0, "stretch")):
        if base and eps in cells:
            d = 100 * (cells[eps]["dice_mean"] - base["dice_mean"])
            ok = d >= -limit
            lines.append(f"{'met   ' if ok else 'MISSED'} ({tag}) epsilon {eps:g}: Dice - non-private = {d:+.1f} pts "
                         f"(goal >= -{limit:g}{'' if ok else f'; missed by {-limit - d:.1f}'})")  # fmt: skip
    for eps, r in cells.items():
        if eps is not None and eps <= 8:
            ok = r["auc_max"] <= 0.55
            lines.append(f"{'met   ' if ok else 'MISSED'} epsilon {eps:g}: attack AUC max over seeds {r['auc_max']:.3f} (goal <= 0.55)")
    if base:
        lines.append(f"       non-private: attack AUC {base['auc_mean']:.3f} ± {base['auc_sd']:.3f} (max {base['auc_max']:.3f})")
    if cost:
        ok = cost["ratio"] <= 2.0
        lines.append(f"{'met   ' if ok else 'MISSED'} cost: DP step / plain step = {cost['ratio']:.2f}x "
                     f"({cost['dp_step_s']:.3f} s vs {cost['plain_step_s']:.3f} s; goal <= 2x)")  # fmt: skip
    return lines


def markdown(summary: list[dict], cost: dict | None, goal_lines: list[str], args) -> str:
    head = (
        f"{args.sites} sites x {args.cases} training cases ({args.size}^3), {args.test_cases} held-out test cases; tiny preset, "
        f"16^3 crops, {args.cases_per_step} cases per step on average; {args.rounds} rounds x {args.local_steps} steps; "
        f"AAM + top-10% 4-bit updates; delta {args.delta:g}, clip {args.clip:g}; seeds {args.seeds}\n\n"
        "| epsilon (target) | epsilon spent (max over sites) | noise multiplier | held-out Dice | attack AUC |\n|---|---:|---:|---:|---:|\n"
    )  # fmt: skip
    rows = []
    for r in summary:
        eps = "inf (no DP)" if r["epsilon_target"] is None else f"{r['epsilon_target']:g}"
        spent = "-" if r["epsilon_spent_max"] is None else f"{r['epsilon_spent_max']:.2f}"
        noise = ", ".join(f"{v:.3g}" for v in r["noise_multiplier"]) or "-"
        rows.append(f"| {eps} | {spent} | {noise} | {100 * r['dice_mean']:.1f} ± {100 * r['dice_sd']:.1f} | "
                    f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f} |")  # fmt: skip
    text = head + "\n".join(rows) + "\n"
    if cost:
        text += (f"\nCost ({cost['network']}, {cost['crops']} crops of {cost['patch']} = {cost['cases']} cases, "
                 f"{cost['torch_threads']} torch thread(s), median of {cost['steps_timed']} steps): plain step "
                 f"{cost['plain_step_s']:.3f} s, DP step {cost['dp_step_s']:.3f} s, ratio {cost['ratio']:.2f}x\n")  # fmt: skip
    return text + "\nGoals:\n\n" + "\n".join(f"- {g}" for g in goal_lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 12 cases per site, 2 rounds x 4 steps (a few minutes)")
    p.add_argument("--parts", default="dice,cost", help="comma list of dice (includes the audit), cost")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--epsilons", default="1,3,8,inf", help="comma list of target epsilons; inf = no DP")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip", type=float, default=1.0)
    for name in ("rounds", "local_steps", "cases", "size", "test_cases", "sites", "cases_per_step", "cost_steps"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int)
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", help="keep the synthetic data here (default: a temporary folder)")
    p.add_argument("--json", help="write rows, summary and cost here (rewritten after every run)")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--tables-from", nargs="+", metavar="JSON", help="run nothing: build the table from the rows (and the "
                   "first cost measurement) of earlier --json files of this benchmark, e.g. one per seed")  # fmt: skip
    args = p.parse_args(argv)
    apply_size(args, SIZES["quick" if args.quick else "full"])
    parts = set(args.parts.split(","))
    if parts - {"dice", "cost"}:
        p.error(f"--parts: unknown {sorted(parts - {'dice', 'cost'})} (valid: dice, cost)")
    epsilons = [math.inf if e.strip() == "inf" else float(e) for e in args.epsilons.split(",")]
    if args.tables_from:
        files = [json.loads(Path(f).read_text()) for f in args.tables_from]
        rows = {(r["seed"], r["epsilon_target"]): r for f in files for r in f["rows"]}  # the last file wins
        cost = next((f["cost"] for f in files if f.get("cost")), None)
        for key in ("rounds", "local_steps", "cases", "size", "test_cases", "sites", "cases_per_step", "delta", "clip"):
            setattr(args, key, files[0]["config"][key])
        args.seeds = sorted({seed for seed, _ in rows})
        summary = summarize(list(rows.values()))
        goal_lines = goals(summary, cost)
        table = markdown(summary, cost, goal_lines, args)
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps({"config": {**files[0]["config"], "seeds": args.seeds}, "sources": [Path(f).name for f in args.tables_from],
                                                   "cost": cost, "rows": list(rows.values()), "summary": summary, "goals": goal_lines}, indent=1))  # fmt: skip
        if args.markdown:
            Path(args.markdown).write_text(table)
        return 0
    setup_torch(args.torch_threads)
    from tqdm.auto import tqdm

    out = {"config": {k: getattr(args, k) for k in ("rounds", "local_steps", "cases", "size", "test_cases", "sites",
                                                     "cases_per_step", "delta", "clip", "seeds")}, "rows": []}  # fmt: skip
    cost = None
    if "cost" in parts:
        cost = measure_cost(args)
        out["cost"] = cost
        print(f"cost: plain step {cost['plain_step_s']:.3f} s, DP step {cost['dp_step_s']:.3f} s, ratio {cost['ratio']:.2f}x", flush=True)
    if "dice" in parts:
        cells = [(seed, eps) for seed in args.seeds for eps in epsilons]
        bar = tqdm(cells, desc="runs", file=sys.stdout, dynamic_ncols=True, disable=None)
        with work_root(args.workdir, "fedsegnet_privbench_") as root:
            for seed, eps in bar:
                row = run_one(make_data(root, seed, args), eps, seed, args)
                out["rows"].append(row)
                spent = ", ".join(f"{s} {e:.2f}" for s, e in row["epsilon_spent"].items() if e is not None) or "no DP"
                bar.write(f"epsilon {eps:g} seed {seed}: Dice {100 * row['dice']:.1f}, attack AUC {row['audit']['auc']:.3f}, "
                          f"spent {spent} ({row['seconds']:.0f} s)")  # fmt: skip
                if args.json:
                    Path(args.json).write_text(json.dumps(out, indent=1))
        bar.close()
    summary = summarize(out["rows"]) if out["rows"] else []
    goal_lines = goals(summary, cost)
    table = markdown(summary, cost, goal_lines, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "summary": summary, "goals": goal_lines}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
