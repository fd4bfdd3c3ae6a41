"""Value benchmark: does joining pay? Each site scored on its own held-out test cases, federated or not.

A hospital joins a federation for one reason: its own segmentation gets better. This benchmark
scores every site on its *own* test split (held-out cases of its own scanner, organ and style;
never trained on; ``synthesize(site_test_cases=...)``, the organs scenario's own splits) under:

* ``local_only``: the site trains alone, as many rounds x steps as it trains in the federation
  (:func:`fedsegnet.federation.run_local`);
* ``fedavg``: FedAvg (sample-count weights), dense float32 updates;
* ``default``: ``jobs/fedsegnet`` as it ships: its aggregation (AAM) with the AAM arguments, the
  uplink codec (``UpdateEncoder``'s arguments) and the weak-label settings its config files give
  (:func:`job_defaults` reads them from the job folder);
* ``finetune``, ``fedbn``, ``ditto``: the default job with its ``personalization`` job arg set to
  that method (personalization.py's methods that run on the job's network); the table's **best
  personalised** column is, per scenario, the candidate with the highest pooled mean over seeds
  (chosen on the test split itself, so optimistic for personalisation; every candidate's pooled
  score is printed too);
* ``centralized``: every site's training cases pooled into one training of the federation's total
  steps (rounds x local steps x sites; :func:`fedsegnet.federation.run_centralized`).

Mixed labels also run ``voxel_only`` (the default job with the voxel site, site-1, alone) and
``all_voxel`` (the default job where every site has its true masks), as
``benchmarks/mixed_supervision.py`` defines them.

Scenarios (4 sites each):

* ``few``: non-IID scanners and structure sizes (``aggregation.py``'s ``NONIID_STYLES``),
  ``--few-cases`` cases per site (default 5: 4 training + 1 validation);
* ``many``: the same with ``--many-cases`` (default 16: 12 training + 4 validation);
* ``organs``: the organs scenario (a different host organ per site);
* ``mixed``: ``mixed_supervision.py``'s label kinds (site-1 voxel, site-2 boxes, site-3 tags,
  site-4 organ only). ``centralized`` cannot pool boxes, tags and partial maps into one loss: it
  pools the same cases with their true masks (the upper bound). A partial site's own test split
  scores its annotated class (organ) in the mixed runs, both classes in the voxel runs.

Scores: Dice x100 (mean over foreground classes, :func:`fedsegnet.training.evaluate.evaluate`) of
the model each site ends with (the final global model; its personalised model under a
personalisation method) on its own test split, mean ± sd over seeds; **pooled**: every site's test
cases together, each scored under its site's model (the case-weighted mean of the sites' scores).
Uplink bytes: the encoded payloads' array bytes (``payload_nbytes``) summed over rounds and sites;
the in-process federation sends the global model down dense (the job's downlink codec is not run).

Runs use :func:`fedsegnet.federation.run_federation` (the sites' ``SiteTrainer`` and the job's
server round in one process); seed ``s`` makes the data with ``synthesize(seed=s)`` and trains
with ``seed=s``.

Re-run:
    python benchmarks/value.py --quick --json docs/results/value_quick.json --markdown docs/results/value_quick.md \\
        --figure docs/results/value_quick.png
    python benchmarks/value.py --json docs/results/value.json --markdown docs/results/value.md --figure docs/results/value.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import apply_size, setup_torch, work_root, write_results
from aggregation import NONIID_STYLES
from mixed_supervision import LABEL_KINDS

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_JOB = REPO / "jobs" / "fedsegnet"
SCENARIOS = ("few", "many", "organs", "mixed")
PERSONAL = ("finetune", "fedbn", "ditto")
MIXED_ONLY = ("voxel_only", "all_voxel")
METHODS = ("local_only", "fedavg", "default", *PERSONAL, "centralized", *MIXED_ONLY)
WITHOUT_DEFAULT_JOB = ("local_only", "fedavg", "centralized")
"""Methods that use no part of the default job but its weak-label loss: their runs stay valid when
the default job changes."""
DIAGNOSTIC = ("aam_dense", "fedavg_codec")
"""Not in the default plan: the default job with one of its two parts switched off, to tell which
one costs what against FedAvg (``--methods aam_dense,fedavg_codec``): AAM on dense float32 updates,
and FedAvg's weights on the job's uplink codec."""
SIZES = {
    "full": {"seeds": [0, 1, 2], "rounds": 10, "local_steps": 30, "few_cases": 5, "many_cases": 16, "cases": 8,
             "size": 40, "test_cases": 4, "methods": ",".join(METHODS)},  # fmt: skip
    # one seed, 32^3, a third of the steps, one personalisation candidate: the harness end to end, not a result
    "quick": {"seeds": [0], "rounds": 4, "local_steps": 10, "few_cases": 5, "many_cases": 16, "cases": 8,
              "size": 32, "test_cases": 2, "methods": "local_only,fedavg,default,finetune,centralized,voxel_only,all_voxel"},  # fmt: skip
}
SITES = tuple(f"site-{i}" for i in range(1, 5))


# ------------------------------------------------------------------------------------- the job
def job_defaults(job_dir: Path = TEMPLATE_JOB, overrides: dict | None = None) -> dict:
    """What ``job_dir`` runs with as it ships: the uplink codec, the server round, weak-label and
    personalisation settings, read from its config files (``"{var}"`` references resolved).

    Args:
        job_dir: the job folder. Defaults to ``jobs/fedsegnet``.
        overrides: ``{job arg: value}`` in place of the job's own values (``--job-arg``; checked
            against the job-arg schema), e.g. to measure a candidate default before it ships.

    Returns:
        ``{"codec": SparseQuantCodec, "aggregation": str, "aam_args": {AdaptiveAggregation argument:
        value}, "weak_loss": {"threshold", "ramp_rounds"}, "values": {job arg: value}}``.

    Raises:
        FedSegNetError: a config file cannot be read, or an override is not a job arg or not a valid
            value (names it); StopIteration: the job has no ``UpdateEncoder`` filter or ``aggregator``
            component.
    """
    import inspect

    from fedsegnet.aggregation import AdaptiveAggregation
    from fedsegnet.compression import SparseQuantCodec
    from fedsegnet.config import check_job
    from fedsegnet.flare.ops.jobs import job_args, read_config

    values = job_args(job_dir)
    if overrides:
        values.update(check_job({**values, **overrides}))

    def resolved(args: dict) -> dict:
        return {k: values[v[1:-1]] if isinstance(v, str) and v[:1] == "{" and v[-1:] == "}" else v for k, v in args.items()}

    client = read_config(job_dir / "app" / "config" / "config_fed_client.json")
    server = read_config(job_dir / "app" / "config" / "config_fed_server.json")
    encoder = resolved(next(f["args"] for chain in client["task_result_filters"] for f in chain["filters"]
                            if f["path"].endswith(".UpdateEncoder")))  # fmt: skip
    aggregator = resolved(next(c["args"] for c in server["components"] if c["id"] == "aggregator"))
    codec_params = inspect.signature(SparseQuantCodec).parameters
    aam_params = inspect.signature(AdaptiveAggregation).parameters
    return {
        "codec": SparseQuantCodec(**{k: v for k, v in encoder.items() if k in codec_params}),
        "aggregation": aggregator["method"],
        "aam_args": {k: v for k, v in aggregator.items() if k in aam_params},
        "weak_loss": {"threshold": values["pseudo_threshold"], "ramp_rounds": values["pseudo_ramp_rounds"]},
        "values": values,
    }


def personal_config(method: str, values: dict):
    """The sites' :class:`~fedsegnet.config.PersonalConfig` of the job with ``personalization=method``."""
    from fedsegnet.config import PersonalConfig

    return PersonalConfig(
        method=method, personal_keys=tuple(values["personal_keys"]), ditto_lambda=values["ditto_lambda"],
        personal_steps=values["personal_steps"], boundary_weight=values["boundary_weight"],
        boundary_band=values["boundary_band"], boundary_perturbation=values["boundary_perturbation"],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ runs
def make_data(root: Path, scenario: str, seed: int, args) -> dict[str, Path]:
    """``{"sites": data folder, "voxel": its all-voxel copy (mixed only)}`` for one seed (made once)."""
    from fedsegnet.data.synth import synthesize

    common = dict(sites=len(SITES), size=args.size, seed=seed)
    plan = {
        "few": {"cases": args.few_cases, "site_styles": NONIID_STYLES, "test_cases": 0, "site_test_cases": args.test_cases},
        "many": {"cases": args.many_cases, "site_styles": NONIID_STYLES, "test_cases": 0, "site_test_cases": args.test_cases},
        "organs": {"cases": args.cases, "scenario": "organs", "test_cases": args.test_cases},
        "mixed": {"cases": args.cases, "label_kinds": LABEL_KINDS, "test_cases": 0, "site_test_cases": args.test_cases},
    }[scenario]  # fmt: skip
    out = {"sites": root / f"{scenario}_s{seed}"}
    if scenario == "mixed":
        out["voxel"] = root / f"{scenario}_voxel_s{seed}"
    for key, folder in out.items():
        if not (folder / SITES[-1] / "dataset.json").exists():
            kwargs = dict(plan)
            if key == "voxel":
                kwargs.pop("label_kinds")
            synthesize(folder, **common, **kwargs)
    return out


def _bytes_up(result: dict) -> int:
    return int(sum(s["bytes_up"] for r in result["rounds"] for s in r["sites"].values()))


def run_one(data: dict[str, Path], scenario: str, method: str, seed: int, args, job: dict) -> dict:
    """One method on one scenario and seed: ``{"scenario", "method", "seed", "per_site": {site:
    {"dice", "hd95", "n_cases"}}, "pooled", "bytes_up" (None without a server), "seconds"}``, and for
    federated methods ``"round_signals"``: per round, each site's weight, AAM signals and gate."""
    from fedsegnet.aggregation import AdaptiveAggregation
    from fedsegnet.config import build_train_config
    from fedsegnet.federation import run_centralized, run_federation, run_local

    config = build_train_config(preset=args.preset, local_steps=args.local_steps, seed=seed, val_max_cases=2)
    sites = {s: data["sites"] / s for s in SITES}
    voxel = {s: data.get("voxel", data["sites"]) / s for s in SITES}
    as_job = dict(aggregation=job["aggregation"], codec=job["codec"], weak_loss=job["weak_loss"], device="cpu")
    t0 = time.perf_counter()
    bytes_up = None
    if method == "local_only":
        tests = {}
        for site, folder in sites.items():
            tests.update(run_local(site, folder, config, rounds=args.rounds, device="cpu", weak_loss=job["weak_loss"])["sites_test"])
    elif method == "centralized":
        with tempfile.TemporaryDirectory(prefix="pool_", dir=data["sites"].parent) as pool:
            tests = run_centralized(voxel, config, rounds=args.rounds, pool_dir=Path(pool) / "pooled", device="cpu")["sites_test"]
    else:
        if method == "fedavg":
            kwargs = dict(aggregation="mean", weak_loss=job["weak_loss"], device="cpu")
        elif method == "fedavg_codec":
            kwargs = dict(aggregation="mean", codec=job["codec"], weak_loss=job["weak_loss"], device="cpu")
        elif method == "aam_dense":
            kwargs = dict(as_job, codec=None, aam=AdaptiveAggregation(**job["aam_args"]))
        else:
            kwargs = dict(as_job, aam=AdaptiveAggregation(**job["aam_args"]))
            if method in PERSONAL:
                kwargs["personal"] = personal_config(method, job["values"])
        chosen = {"voxel_only": {"site-1": sites["site-1"]}, "all_voxel": voxel}.get(method, sites)
        result = run_federation(chosen, config, rounds=args.rounds, **kwargs)
        bytes_up = _bytes_up(result)
        # per round: each site's aggregation weight and AAM signals (why a site counts for what it does)
        signals = [{s: {k: r.get(k) for k in ("weight", "quality", "performance", "cos_dist", "norm_ratio", "gate", "val_dice_global", "val_dice_local")
                        if isinstance(r.get(k), (int, float, str))} for s, r in rec["sites"].items()}
                   for rec in result["rounds"]]  # fmt: skip
        tests = result["sites_test"]
        if method == "voxel_only":  # site-1's model on every site's own test split
            from fedsegnet.federation import score_on_sites

            tests = score_on_sites(result["final_weights"], sites, config, device="cpu")
    per_site = {s: {"dice": t["dice_mean"], "hd95": t["hd95_mean"], "n_cases": t["n_cases"]} for s, t in tests.items()}
    row = {"scenario": scenario, "method": method, "seed": seed, "per_site": per_site, "pooled": pooled(per_site),
           "bytes_up": bytes_up, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if method not in ("local_only", "centralized"):
        row["round_signals"] = signals
    return row


def pooled(per_site: dict) -> float | None:
    """Case-weighted mean Dice of ``{site: {"dice", "n_cases"}}`` (sites without a score left out)."""
    scored = [(v["dice"], v["n_cases"]) for v in per_site.values() if v["dice"] is not None and v["n_cases"]]
    return sum(d * n for d, n in scored) / sum(n for _, n in scored) if scored else None


# --------------------------------------------------------------------------------------- summary
def _mean_sd(xs: list[float]) -> tuple[float | None, float]:
    xs = [x for x in xs if x is not None]
    return (statistics.fmean(xs) if xs else None), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize_cells(rows: list[dict]) -> list[dict]:
    """One entry per (scenario, method) with runs: ``{"scenario", "method", "seeds", "pooled_mean",
    "pooled_sd", "pooled_by_seed": {seed: dice}, "per_site": {site: {"mean", "sd"}}, "bytes_up"
    (mean over seeds or None)}``; rows may lack ``pooled`` (computed from ``per_site``)."""
    out = []
    for sc in SCENARIOS:
        for mt in (*METHODS, *DIAGNOSTIC):
            mine = sorted((r for r in rows if r["scenario"] == sc and r["method"] == mt), key=lambda r: r["seed"])
            if not mine:
                continue
            by_seed = {r["seed"]: r.get("pooled", pooled(r["per_site"])) for r in mine}
            mean, sd = _mean_sd(list(by_seed.values()))
            sites = sorted({s for r in mine for s in r["per_site"]})
            per_site = {s: dict(zip(("mean", "sd"), _mean_sd([r["per_site"][s]["dice"] for r in mine if s in r["per_site"]])))
                        for s in sites}  # fmt: skip
            b = [r["bytes_up"] for r in mine if r.get("bytes_up") is not None]
            out.append({"scenario": sc, "method": mt, "seeds": sorted(by_seed), "pooled_mean": mean, "pooled_sd": sd,
                        "pooled_by_seed": by_seed, "per_site": per_site, "bytes_up": statistics.fmean(b) if b else None})  # fmt: skip
    return out


def best_personal(cells: dict, sc: str) -> str | None:
    """The personalisation candidate with the highest pooled mean in scenario ``sc`` (None: none ran)."""
    runs = [m for m in PERSONAL if (sc, m) in cells and cells[sc, m]["pooled_mean"] is not None]
    return max(runs, key=lambda m: cells[sc, m]["pooled_mean"]) if runs else None


def _check(ok: bool, text: str) -> str:
    return f"{'met   ' if ok else 'MISSED'} {text}"


def goals(summary: list[dict]) -> list[str]:
    """The issue's goals, met or missed with their numbers (points = Dice x 100)."""
    cells = {(c["scenario"], c["method"]): c for c in summary}
    lines = []
    for sc in SCENARIOS:
        d, f, c, loc = (cells.get((sc, m)) for m in ("default", "fedavg", "centralized", "local_only"))
        if d and c and d["pooled_mean"] is not None and c["pooled_mean"]:
            ratio = d["pooled_mean"] / c["pooled_mean"]
            lines.append(_check(ratio >= 0.98, f"{sc}: default vs centralized (pooled) {100 * d['pooled_mean']:.1f} / "
                                f"{100 * c['pooled_mean']:.1f} = {100 * ratio:.1f}% (goal >= 98%)"))  # fmt: skip
        if d and f and d["pooled_mean"] is not None and f["pooled_mean"] is not None:
            diff = 100 * (d["pooled_mean"] - f["pooled_mean"])
            lines.append(_check(diff >= -1, f"{sc}: default - fedavg (pooled) = {diff:+.1f} pts (goal >= -1)"))
        if d and f and d["bytes_up"] and f["bytes_up"]:
            x = f["bytes_up"] / d["bytes_up"]
            lines.append(_check(x >= 20, f"{sc}: uplink bytes fedavg / default = {x:.1f}x ({f['bytes_up']:,.0f} / "
                                f"{d['bytes_up']:,.0f} B; goal >= 20x)"))  # fmt: skip
        best = best_personal(cells, sc)
        for label, run in (("default", d), (f"best personalised ({best})", cells.get((sc, best)))):
            if run and loc:
                gains = {s: 100 * (run["per_site"][s]["mean"] - loc["per_site"][s]["mean"]) for s in run["per_site"]
                         if s in loc["per_site"] and None not in (run["per_site"][s]["mean"], loc["per_site"][s]["mean"])}  # fmt: skip
                if gains:
                    worst = min(gains, key=gains.get)
                    lines.append(_check(gains[worst] >= -1, f"{sc}: worst site under {label} vs local-only: {worst} "
                                        f"{gains[worst]:+.1f} pts (goal >= -1)"))  # fmt: skip
                    if sc == "few" and label == "default":
                        gain = statistics.fmean(gains.values())
                        lines.append(_check(gain >= 5, f"few: mean gain of default over local-only = {gain:+.1f} pts "
                                            f"over {len(gains)} sites (goal >= +5)"))  # fmt: skip
    best = best_personal(cells, "organs")
    if best:
        for base in ("local_only", "fedavg"):
            if ("organs", base) in cells:
                diff = 100 * (cells["organs", best]["pooled_mean"] - cells["organs", base]["pooled_mean"])
                lines.append(_check(diff >= 3, f"organs: best personalised ({best}) - {base} (pooled) = {diff:+.1f} pts (goal >= +3)"))
    m, v, a = (cells.get(("mixed", k)) for k in ("default", "voxel_only", "all_voxel"))
    if m and v:
        seeds = sorted(set(m["pooled_by_seed"]) & set(v["pooled_by_seed"]))
        diffs = [100 * (m["pooled_by_seed"][s] - v["pooled_by_seed"][s]) for s in seeds]
        lines.append(_check(bool(diffs) and min(diffs) >= 0, "mixed: default (mixed labels) - voxel_only per seed "
                            f"{seeds}: {', '.join(f'{x:+.1f}' for x in diffs)} pts (goal >= 0 on every seed)"))  # fmt: skip
        if a:
            gap = a["pooled_mean"] - v["pooled_mean"]
            if gap > 0:
                closed = (m["pooled_mean"] - v["pooled_mean"]) / gap
                lines.append(_check(closed >= 0.5, f"mixed: default closes {100 * closed:.0f}% of the gap voxel_only -> "
                                    f"all_voxel ({100 * gap:+.1f} pts; goal >= 50%)"))  # fmt: skip
            else:
                lines.append(_check(False, f"mixed: no gap to close: all_voxel - voxel_only = {100 * gap:+.1f} pts "
                                    "(goal: default closes >= 50% of it)"))  # fmt: skip
    return lines


def _cell(c: dict | None, site: str | None = None) -> str:
    if c is None:
        return ""
    mean, sd = (c["pooled_mean"], c["pooled_sd"]) if site is None else (c["per_site"].get(site, {}).get("mean"), c["per_site"].get(site, {}).get("sd"))
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if len(c["seeds"]) == 1 else f" ± {100 * sd:.1f}")


def markdown(summary: list[dict], args, goal_lines: list[str]) -> str:
    """Per scenario: a table (sites and the pooled test set x local-only, FedAvg, default, best
    personalised, centralized), the uplink bytes, every candidate's pooled score; then the goals."""
    cells = {(c["scenario"], c["method"]): c for c in summary}
    out = [
        f"4 sites, {args.rounds} rounds x {args.local_steps} local steps, preset {args.preset}, {args.size}^3, "
        f"{args.test_cases} own test cases per site, seeds {args.seeds}. Dice x100 on each site's own test split "
        "(mean ± sd over seeds); pooled: every site's test cases, each under its site's model.\n"
    ]
    for sc in SCENARIOS:
        if not any(k[0] == sc for k in cells):
            continue
        best = best_personal(cells, sc)
        cols = [("local-only", "local_only"), ("FedAvg", "fedavg"), ("default", "default"),
                (f"best personalised ({best})", best), ("centralized", "centralized")]  # fmt: skip
        sites = sorted({s for (s2, _), c in cells.items() if s2 == sc for s in c["per_site"]})
        out += [f"\n### {sc}\n", "| site | " + " | ".join(n for n, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
        for site in [*sites, None]:
            name = site or "**pooled**"
            out.append(f"| {name} | " + " | ".join(_cell(cells.get((sc, m)), site) for _, m in cols) + " |")
        d, f = cells.get((sc, "default")), cells.get((sc, "fedavg"))
        if d and f and d["bytes_up"] and f["bytes_up"]:
            out.append(f"\nUplink, all rounds and sites: FedAvg {f['bytes_up'] / 2**20:.2f} MiB, default "
                       f"{d['bytes_up'] / 2**20:.2f} MiB ({f['bytes_up'] / d['bytes_up']:.1f}x fewer).")  # fmt: skip
        others = [f"{m} {_cell(cells[sc, m])}" for m in (*PERSONAL, *MIXED_ONLY, *DIAGNOSTIC) if (sc, m) in cells]
        if others:
            out.append("\nPooled, every personalisation candidate and extra run: " + ", ".join(others) + ".")
    out += ["\n### Goals\n", *(f"- {g}" for g in goal_lines)]
    return "\n".join(out) + "\n"


def plot(summary: list[dict], path: str) -> Path:
    """One arrow per site and scenario: its Dice under local-only (tail) -> under the default job (head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(c["scenario"], c["method"]): c for c in summary}
    scenarios = [sc for sc in SCENARIOS if (sc, "local_only") in cells and (sc, "default") in cells]
    fig, ax = plt.subplots(figsize=(2.4 + 1.6 * len(scenarios), 4.0), dpi=120)
    for i, sc in enumerate(scenarios):
        loc, d = cells[sc, "local_only"]["per_site"], cells[sc, "default"]["per_site"]
        sites = [s for s in SITES if s in loc and s in d and None not in (loc[s]["mean"], d[s]["mean"])]
        for j, site in enumerate(sites):
            x, y0, y1 = i + (j - (len(sites) - 1) / 2) * 0.18, 100 * loc[site]["mean"], 100 * d[site]["mean"]
            ax.annotate("", xy=(x, y1), xytext=(x, y0),
                        arrowprops={"arrowstyle": "->", "color": "C2" if y1 >= y0 - 1 else "C3", "lw": 1.6})  # fmt: skip
            ax.plot([x], [y0], "o", color=f"C{j}", ms=4, label=site if i == 0 else None)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_xlim(-0.6, len(scenarios) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Dice x100, site's own test split")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.set_title("local-only (dot) -> default job (arrow head)\nred: the site loses > 1 pt", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 4 rounds x 10 steps at 32^3, one personalisation candidate")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {SCENARIOS}")
    p.add_argument("--methods", help=f"comma list of {METHODS} (voxel_only, all_voxel: mixed only); diagnostics: {DIAGNOSTIC}")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--few-cases", type=int, help="cases per site of 'few' (training + validation)")
    p.add_argument("--many-cases", type=int, help="cases per site of 'many'")
    p.add_argument("--cases", type=int, help="cases per site of 'organs' and 'mixed'")
    p.add_argument("--size", type=int, help="volume edge in voxels")
    p.add_argument("--test-cases", type=int, help="own test cases per site")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", help="keep the synthetic data here (default: a temporary folder)")
    p.add_argument("--json", help="write rows, summary and goals here (rewritten after every run)")
    p.add_argument("--resume", help="a previous --json of this benchmark: its runs of this plan are kept and skipped")
    p.add_argument("--markdown", help="write the tables and goals here")
    p.add_argument("--figure", help="draw the local-only -> default arrows into this PNG")
    p.add_argument("--job-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="run the default job (and the methods built on it) with this job arg instead of its own "
                        "(repeatable), e.g. aam_temperature=0.2")  # fmt: skip
    p.add_argument("--aam-margin", type=float, default=None,
                   help="AAM's tolerated shortfall of quality and performance below the median, not a job arg "
                        "(default: AdaptiveAggregation's), as aggregation.py takes it")  # fmt: skip
    args = p.parse_args(argv)
    apply_size(args, SIZES["quick" if args.quick else "full"])
    scenarios, methods = args.scenarios.split(","), args.methods.split(",")
    bad = [s for s in scenarios if s not in SCENARIOS] + [m for m in methods if m not in (*METHODS, *DIAGNOSTIC)]
    if bad:
        p.error(f"unknown scenario/method {bad}; scenarios {SCENARIOS}, methods {METHODS}")

    from fedsegnet.config import parse_job_values

    setup_torch(args.torch_threads)
    job = job_defaults(overrides=parse_job_values(args.job_arg))
    if args.aam_margin is not None:
        job["aam_args"]["margin"] = args.aam_margin
    # what the default job ran with, kept in the --json (a --resume of another default job reruns its runs)
    args.default_job = json.loads(json.dumps({"aam": job["aam_args"], "codec": repr(job["codec"]), "weak_loss": job["weak_loss"],
                                              "values": job["values"]}, default=str))  # fmt: skip
    cells = [(seed, sc, mt) for seed in args.seeds for sc in scenarios for mt in methods if mt not in MIXED_ONLY or sc == "mixed"]
    print(
        f"scenarios {scenarios}; methods {methods}; seeds {args.seeds}; preset {args.preset}, {args.rounds} rounds x "
        f"{args.local_steps} steps, {args.size}^3, {args.test_cases} own test cases per site; default job: "
        f"{job['aggregation']} {job['aam_args']}, {job['codec']!r}; {len(cells)} runs",
        flush=True,
    )  # fmt: skip
    rows = []
    if args.resume:
        plan, before = set(cells), json.loads(Path(args.resume).read_text())
        rows = [r for r in before["rows"] if (r["seed"], r["scenario"], r["method"]) in plan]
        then = before["args"].get("default_job")
        if then != args.default_job:  # the default job changed (its files, --job-arg, --aam-margin): its runs are stale
            # a --json from before the default job was recorded: its weak-label loss is taken to be this one's
            same_loss = then is None or then.get("weak_loss") == job["weak_loss"]
            kept = [r for r in rows if r["method"] in WITHOUT_DEFAULT_JOB] if same_loss else []
            print(f"--resume {args.resume}: its default job was {then}, this run's is {args.default_job}; keeping only "
                  f"its {len(kept)} run(s) that do not use it ({', '.join(WITHOUT_DEFAULT_JOB)}), {len(rows) - len(kept)} "
                  "run(s) again", flush=True)  # fmt: skip
            rows = kept
        done = {(r["seed"], r["scenario"], r["method"]) for r in rows}
        cells = [c for c in cells if c not in done]
        print(f"resumed {len(rows)} run(s) from {args.resume}; {len(cells)} to go", flush=True)
    t0 = time.perf_counter()
    with work_root(args.workdir, "fedsegnet_value_") as root:
        for seed, sc, mt in cells:
            row = run_one(make_data(root, sc, seed, args), sc, mt, seed, args, job)
            rows.append(row)
            sites = " ".join(f"{s}:{100 * v['dice']:.0f}" for s, v in row["per_site"].items() if v["dice"] is not None)
            print(f"{sc:>7} {mt:>12} seed {seed}: pooled {100 * (row['pooled'] or 0):.1f}  {sites}  ({row['seconds']} s)", flush=True)
            summary = summarize_cells(rows)
            write_results(args.json, args, rows, summary, goals(summary))
    summary = summarize_cells(rows)
    goal_lines = goals(summary)
    table = markdown(summary, args, goal_lines)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    write_results(args.json, args, rows, summary, goal_lines)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    if args.figure:
        print(f"figure: {plot(summary, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
