"""Communication methods compared in real ``nvflare simulator`` runs: bytes per round and held-out Dice.

Every method is a job folder derived from ``jobs/fedsegnet`` (:func:`~fedsegnet.flare.ops.jobs.configure_job`
plus edits of the filter lists in the copy's ``app/config/config_fed_{server,client}.json``), run by
:class:`~fedsegnet.flare.ops.jobs.SimulatorRun` on the same synthetic sites with the same seeds (seed
``s`` makes the data with ``synthesize(seed=s)`` and runs the job with ``seed=s``). The methods
(:data:`METHODS`):

- ``none``: no codec; the server's filters keep only ``MessageBytes`` (down on task data, up on
  results), the sites have no filters (FLARE refuses empty filter lists, so the keys are removed) and
  the ``global_model_sync`` component goes.
- ``flare_*``: FLARE's own ``ModelQuantizer`` (``nvflare.app_opt.pt.quantization``) as the sites'
  result filter and ``ModelDequantizer`` after ``MessageBytes`` on the server; the downlink is
  uncompressed. **Uplink only**, because ``ModelQuantizer`` as a server task-data filter quantizes
  the task data in place, and FLARE shares that data (dict and meta) between all sites of a round: the
  first site's filter changes the server's copy and later sites get it already quantized (FLARE's own
  comment in ``quantizer.py`` says so). FLARE imports ``bitsandbytes`` when it loads these classes:
  without it the rows are skipped (and the reason printed). ``blockwise8``/``float4`` call
  ``.cuda()``, so those rows run only when CUDA is available. The site policy of the simulator
  workspace admits ``nvflare.app_opt.pt.quantization.``.
- ``ours_r{ratio}_b{bits}``: FedSegNet's codec (``SparseQuantCodec``: top-k + per-block quantization,
  error feedback) on both links, as the job ships it, at the given ``up_ratio = down_ratio`` and
  ``up_bits = down_bits``. Round 0's downlink is full weights (every site starts from the full
  model), later rounds send the encoded difference of the global model.
- ``ours_up_only_r{ratio}_b{bits}``: the uplink codec only; full weights down (no
  ``GlobalModelEncoder``/``GlobalModelDecoder``, no ``global_model_sync``).

Bytes are FLARE's serialized message sizes (``fobs.dumps`` of the Shareable) measured by the
server's ``MessageBytes`` filters and logged per site and round in the round records
(``SimResults.read_records()``). Per method: ``bytes_up_per_round`` and ``bytes_down_per_round`` are
means over seeds, rounds and sites (bytes of one site in one round); ``bytes_down_per_round_after_first``
leaves out round 0 (full weights for our codec); ``ratio`` is ``none``'s uplink bytes over the
method's, ``ratio_total`` the same for uplink + downlink (``ratio_total_after_first`` with the
downlink of rounds >= 1 only: what a long run tends to). ``seconds`` is the simulator's wall time
per run (without the held-out evaluation). Quality: mean foreground Dice of the final
global model (``FL_global_model.pt``) on a held-out test set the sites never see (``<data>/test``),
evaluated with :func:`fedsegnet.training.evaluate_file.evaluate_model_file` (what ``fedsegnet eval`` runs);
mean ± sd over seeds (sd 0 with one seed), and its difference from ``none`` in Dice points.

FLARE's cross-site evaluation workflow is removed from every job (``--cross-site`` keeps it): it
does not change the global model and would cost most of a quick run's time. ``none`` always runs:
the ratios are relative to it. A failed run is reported (exit code and log file) and its row marked;
the other runs go on.

    python benchmarks/compression.py --quick --json compression_quick.json    # 1 seed, 4 rounds
    python benchmarks/compression.py --json compression.json --markdown compression.md   # 3 seeds, 8 rounds
    python benchmarks/compression.py --methods none,ours_r0.01_b8 --seeds 0 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_JOB = REPO / "jobs" / "fedsegnet"
QUANTIZATION_PREFIX = "nvflare.app_opt.pt.quantization."

# name -> how the job is changed. kind: "none" | "flare" (FLARE ModelQuantizer, uplink only) |
# "ours" (both links) | "ours_up_only"; "args": job args; "gpu": needs CUDA (FLARE's bitsandbytes
# types call .cuda()).
METHODS: dict[str, dict] = {
    "none": {"kind": "none", "args": {}},
    "flare_fp16": {"kind": "flare", "quantization_type": "float16", "args": {}},
    "flare_adaquant": {"kind": "flare", "quantization_type": "adaquant", "args": {}},
    "flare_blockwise8": {"kind": "flare", "quantization_type": "blockwise8", "gpu": True, "args": {}},
    "flare_float4": {"kind": "flare", "quantization_type": "float4", "gpu": True, "args": {}},
    "ours_r0.01_b8": {"kind": "ours", "args": {"up_ratio": 0.01, "up_bits": 8, "down_ratio": 0.01, "down_bits": 8}},
    "ours_r0.05_b8": {"kind": "ours", "args": {"up_ratio": 0.05, "up_bits": 8, "down_ratio": 0.05, "down_bits": 8}},
    "ours_r0.01_b4": {"kind": "ours", "args": {"up_ratio": 0.01, "up_bits": 4, "down_ratio": 0.01, "down_bits": 4}},
    "ours_r0.05_b4": {"kind": "ours", "args": {"up_ratio": 0.05, "up_bits": 4, "down_ratio": 0.05, "down_bits": 4}},
    "ours_r0.1_b4": {"kind": "ours", "args": {"up_ratio": 0.1, "up_bits": 4, "down_ratio": 0.1, "down_bits": 4}},
    "ours_r0.1_b8": {"kind": "ours", "args": {"up_ratio": 0.1, "up_bits": 8, "down_ratio": 0.1, "down_bits": 8}},
    "ours_r0.2_b4": {"kind": "ours", "args": {"up_ratio": 0.2, "up_bits": 4, "down_ratio": 0.2, "down_bits": 4}},
    "ours_r0.002_b4": {"kind": "ours", "args": {"up_ratio": 0.002, "up_bits": 4, "down_ratio": 0.002, "down_bits": 4}},
    "ours_up_only_r0.01_b8": {"kind": "ours_up_only", "args": {"up_ratio": 0.01, "up_bits": 8}},
}
REFERENCE = "none"
# what runs without --methods (the table in docs/compression.md); --methods all runs every entry
DEFAULT_METHODS = (
    "none", "flare_fp16", "flare_adaquant", "ours_r0.01_b8", "ours_r0.05_b4", "ours_r0.1_b4", "ours_r0.2_b4",
)  # fmt: skip

# run sizes: (full, quick)
PROFILES = {
    "full": {"seeds": [0, 1, 2], "rounds": 8, "local_steps": 40, "cases": 12, "size": 48, "test_cases": 8},
    "quick": {"seeds": [0], "rounds": 4, "local_steps": 20, "cases": 6, "size": 40, "test_cases": 4},
}


# ------------------------------------------------------------------------------------------- jobs
def _message_bytes(direction: str) -> dict:
    return {"path": "fedsegnet.flare.compression.MessageBytes", "args": {"direction": direction}}


def _train_chain(filters: list[dict]) -> list[dict]:
    return [{"tasks": ["train"], "filters": filters}]


def edit_job_configs(job_dir: Path, method: dict):
    """Change the filter lists (and ``global_model_sync``) of a copied ``jobs/fedsegnet`` for ``method``.

    Args:
        job_dir: the copied job folder (its ``app/config`` is edited in place).
        method: an entry of :data:`METHODS`.

    Raises:
        ValueError: unknown ``kind``.
    """
    kind = method["kind"]
    if kind not in ("none", "flare", "ours", "ours_up_only"):
        raise ValueError(f"kind={kind!r}: unknown (valid: none, flare, ours, ours_up_only)")
    if kind == "ours":
        return  # the job as it ships
    config_dir = job_dir / "app" / "config"
    server_path, client_path = config_dir / "config_fed_server.json", config_dir / "config_fed_client.json"
    server, client = json.loads(server_path.read_text()), json.loads(client_path.read_text())

    # every other kind sends full weights down: no downlink codec, bytes still measured
    server["components"] = [c for c in server["components"] if c.get("id") != "global_model_sync"]
    server["task_data_filters"] = _train_chain([_message_bytes("down")])
    client.pop("task_data_filters", None)
    if kind == "none":
        server["task_result_filters"] = _train_chain([_message_bytes("up")])
        client.pop("task_result_filters", None)
    elif kind == "flare":
        server["task_result_filters"] = _train_chain(
            [_message_bytes("up"), {"path": QUANTIZATION_PREFIX + "dequantizer.ModelDequantizer", "args": {}}]
        )
        client["task_result_filters"] = _train_chain(
            [{
                "path": QUANTIZATION_PREFIX + "quantizer.ModelQuantizer",
                "args": {"quantization_type": method["quantization_type"]},
            }]
        )  # fmt: skip
    # ours_up_only: keep UpdateEncoder (site) and MessageBytes up + UpdateDecoder (server)
    server_path.write_text(json.dumps(server, indent=2) + "\n")
    client_path.write_text(json.dumps(client, indent=2) + "\n")


def drop_cross_site_eval(job_dir: Path):
    """Remove FLARE's ``CrossSiteModelEval`` workflow from the server config of ``job_dir``."""
    path = job_dir / "app" / "config" / "config_fed_server.json"
    server = json.loads(path.read_text())
    server["workflows"] = [w for w in server["workflows"] if not w.get("path", "").endswith(".CrossSiteModelEval")]
    path.write_text(json.dumps(server, indent=2) + "\n")


def prepare_workspace_policy(ws: Path):
    """Write the simulator workspace's site policy with FLARE's quantization filters admitted.

    ``SimulatorRun.start`` writes the FedSegNet policy again and keeps entries already there.
    """
    from fedsegnet.flare.ops.policy import write_site_policy

    path = write_site_policy(ws / "local")
    resources = json.loads(path.read_text())
    allow = resources.setdefault("class_allow_list", [])
    if QUANTIZATION_PREFIX not in allow and "*" not in allow:
        allow.append(QUANTIZATION_PREFIX)
    path.write_text(json.dumps(resources, indent=2))


# ------------------------------------------------------------------------------------------- runs
def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def bytes_summary(records: list[dict]) -> dict:
    """Per-site bytes per round from round records: means over rounds and sites, and problems found."""
    up, down, down_after, problems = [], [], [], []
    for rec in records:
        sites = rec.get("sites", {})
        if not sites:
            problems.append(f"round {rec.get('round')}: no site in the record")
        for site, s in sites.items():
            if "bytes_up" not in s or "bytes_down" not in s:
                problems.append(f"round {rec.get('round')} {site}: no bytes_up/bytes_down in the record")
                continue
            up.append(s["bytes_up"])
            down.append(s["bytes_down"])
            if rec.get("round", 0) >= 1:
                down_after.append(s["bytes_down"])
    return {
        "bytes_up": _mean(up), "bytes_down": _mean(down), "bytes_down_after_first": _mean(down_after),
        "problems": problems,
    }  # fmt: skip


def first_error_line(log_file, limit: int = 400) -> str | None:
    """The first FLARE ``ERROR`` log line of a simulator log that is not a bare traceback header."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if " - ERROR - " in line and not line.rstrip().endswith("Traceback (most recent call last):"):
            line = line.split(" - ERROR - ", 1)[1].strip()
            return line if len(line) <= limit else line[:limit] + "..."
    return None


def run_one(name: str, seed: int, data_root: Path, run_dir: Path, args) -> dict:
    """One simulator run of method ``name`` with seed ``seed``; never raises for a failed run."""
    from fedsegnet.errors import FedSegNetError
    from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job, wait_with_progress
    from fedsegnet.training.evaluate_file import evaluate_model_file

    method = METHODS[name]
    job_args = dict(
        num_rounds=args.rounds, min_clients=args.sites, preset=args.preset, local_steps=args.local_steps,
        seed=seed, torch_threads=args.torch_threads, val_max_cases=args.val_max_cases, **method["args"],
    )  # fmt: skip
    job = configure_job(TEMPLATE_JOB, run_dir / "job", **job_args)
    edit_job_configs(job, method)
    if not args.cross_site:
        drop_cross_site_eval(job)
    ws = run_dir / "ws"
    prepare_workspace_policy(ws)
    res = SimResults(ws)
    out = {"method": name, "seed": seed, "ok": False, "rc": None, "error": None, "site_errors": []}
    t0 = time.perf_counter()
    run = SimulatorRun(job, ws, args.sites, args.sites, data_root=data_root)
    out["log"] = str(run.log_file)
    try:
        with run:
            out["rc"] = wait_with_progress(run, res, timeout=args.timeout)
    except FedSegNetError as e:  # timeout: the run was stopped
        out["error"] = str(e)
    out["seconds"] = time.perf_counter() - t0
    records = res.read_records()
    out["rounds_recorded"] = len(records)
    out["site_errors"] = [
        f"round {r.get('round')} {e['site']}: {e['message']}" for r in records for e in r.get("errors", [])
    ]
    b = bytes_summary(records)
    out.update(bytes_up=b["bytes_up"], bytes_down=b["bytes_down"], bytes_down_after_first=b["bytes_down_after_first"])
    problems = list(b["problems"])
    if out["error"] is None and out["rc"] != 0:
        out["error"] = f"simulator exit code {out['rc']}"
    if out["error"] is None and len(records) != args.rounds:
        problems.append(f"{len(records)} round records, expected {args.rounds}")
    if out["error"] is None and not res.global_model.exists():
        out["error"] = f"no global model at {res.global_model}"
    if out["error"] is None:
        try:
            result, _ = evaluate_model_file(res.global_model, data_root / "test", split="test")
            out["dice"] = result.dice_mean
            out["ok"] = result.dice_mean is not None
        except FedSegNetError as e:
            out["error"] = f"held-out evaluation failed: {e}"
    if problems:
        out["error"] = "; ".join(([out["error"]] if out["error"] else []) + problems)
        out["ok"] = False
    out["server_log"] = str(res.server_log)
    out["log_error"] = None if out["ok"] else first_error_line(run.log_file)
    return out


# ---------------------------------------------------------------------------------------- summary
def summarize(name: str, runs: list[dict], reference: dict | None) -> dict:
    """One row per method from its runs (one per seed); ratios against the reference row."""
    ok = [r for r in runs if r["ok"]]
    dice = [r["dice"] for r in ok]
    row = {
        "method": name,
        "bytes_up_per_round": _mean(r["bytes_up"] for r in ok),
        "bytes_down_per_round": _mean(r["bytes_down"] for r in ok),
        "ratio": None,
        "ratio_total": None,
        "dice_mean": statistics.fmean(dice) if dice else None,
        "dice_sd": (statistics.stdev(dice) if len(dice) > 1 else 0.0) if dice else None,
        "dice_per_seed": {str(r["seed"]): r["dice"] for r in ok},
        "dice_diff_vs_none_pts": None,
        "ratio_total_after_first": None,
        "bytes_down_per_round_after_first": _mean(r["bytes_down_after_first"] for r in ok),
        "seconds": _mean(r["seconds"] for r in runs),
        "seeds": [r["seed"] for r in runs],
        "failed": [
            {
                "seed": r["seed"], "rc": r["rc"], "error": r["error"], "first_log_error": r["log_error"],
                "log": r["log"], "server_log": r["server_log"],
            }
            for r in runs if not r["ok"]
        ],  # fmt: skip
        "site_errors": [f"seed {r['seed']}: {e}" for r in runs for e in r["site_errors"]],
    }
    if reference is not None and row["bytes_up_per_round"]:
        ref_up, ref_down = reference["bytes_up_per_round"], reference["bytes_down_per_round"]
        if ref_up:
            row["ratio"] = ref_up / row["bytes_up_per_round"]
        if ref_up and ref_down is not None and row["bytes_down_per_round"] is not None:
            row["ratio_total"] = (ref_up + ref_down) / (row["bytes_up_per_round"] + row["bytes_down_per_round"])
        ref_after, after = reference["bytes_down_per_round_after_first"], row["bytes_down_per_round_after_first"]
        if ref_up and ref_after is not None and after is not None:
            row["ratio_total_after_first"] = (ref_up + ref_after) / (row["bytes_up_per_round"] + after)
    if reference is not None and reference["dice_mean"] is not None and row["dice_mean"] is not None:
        row["dice_diff_vs_none_pts"] = 100.0 * (row["dice_mean"] - reference["dice_mean"])
    return row


def _fmt(x, spec=",.0f"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ratio(x):
    return _fmt(x, ".1f") + ("x" if x else "")


COLUMNS = (
    # header, width, cell
    ("method", 24, lambda r: r["method"] + (" (FAILED)" if r["failed"] and r["dice_mean"] is None else "")),
    ("up B/round", 12, lambda r: _fmt(r["bytes_up_per_round"])),
    ("down B/round", 13, lambda r: _fmt(r["bytes_down_per_round"])),
    ("down r>=1", 12, lambda r: _fmt(r["bytes_down_per_round_after_first"])),
    ("ratio up", 9, lambda r: _ratio(r["ratio"])),
    ("ratio tot", 10, lambda r: _ratio(r["ratio_total"])),
    ("tot r>=1", 9, lambda r: _ratio(r["ratio_total_after_first"])),
    ("Dice", 16, lambda r: "-" if r["dice_mean"] is None else f"{r['dice_mean']:.3f} ± {r['dice_sd']:.3f}"),
    ("ΔDice pts", 10, lambda r: _fmt(r["dice_diff_vs_none_pts"], "+.1f")),
    ("s/run", 7, lambda r: _fmt(r["seconds"], ".0f")),
)


def table_text(rows: list[dict]) -> str:
    lines = ["".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w, _) in enumerate(COLUMNS))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append("".join(f"{f(r):<{w}}" if i == 0 else f"{f(r):>{w}}" for i, (_, w, f) in enumerate(COLUMNS)))
    return "\n".join(lines)


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, _, f in COLUMNS) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def _bitsandbytes_problem() -> str | None:
    try:
        import bitsandbytes  # noqa: F401  (FLARE's quantizer imports it at module load)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def select_methods(requested: list[str] | None) -> tuple[list[str], list[str]]:
    """``(methods to run, notes on methods left out)``; ``none`` is always run first (the reference)."""
    import torch

    names = list(METHODS) if requested is None else list(dict.fromkeys(requested))
    notes = []
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
        notes.append(f"{REFERENCE}: added, the ratios and Dice differences are relative to it")
    bnb_problem = _bitsandbytes_problem() if any(METHODS[n]["kind"] == "flare" for n in names) else None
    selected, no_bnb, no_cuda = [], [], []
    for n in names:
        m = METHODS[n]
        if m["kind"] == "flare" and bnb_problem:
            no_bnb.append(n)
        elif m.get("gpu") and not torch.cuda.is_available():
            no_cuda.append(n)
        else:
            selected.append(n)
    if no_bnb:
        notes.append(
            f"{', '.join(no_bnb)}: skipped: FLARE's quantization filters import the Python package bitsandbytes "
            f"at module load and it cannot be imported here ({bnb_problem})"
        )
    if no_cuda:
        notes.append(
            f"{', '.join(no_cuda)} (and FLARE's normfloat4): not run: FLARE's bitsandbytes quantization calls "
            ".cuda() and CUDA is not available"
        )
    gpu_rows = [n for n in no_bnb if METHODS[n].get("gpu")]
    if gpu_rows and not torch.cuda.is_available():
        notes.append(f"{', '.join(gpu_rows)} would also need CUDA: FLARE's bitsandbytes quantization calls .cuda()")
    return selected, notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)} (default: {', '.join(DEFAULT_METHODS)}; 'all': every one that can run)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 rounds, 20 local steps, smaller data")
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--rounds", type=int, help="default 8 (quick: 4)")
    p.add_argument("--local-steps", type=int, help="default 40 (quick: 20)")
    p.add_argument("--cases", type=int, help="cases per site (default 12; quick: 6)")
    p.add_argument("--size", type=int, help="volume edge in voxels (default 48; quick: 40)")
    p.add_argument("--test-cases", type=int, help="held-out test cases (default 8; quick: 4)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads per site")
    p.add_argument("--val-max-cases", type=int, default=2, help="validation cases per site evaluation")
    p.add_argument("--cross-site", action="store_true", help="keep FLARE's cross-site evaluation workflow")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per simulator run")
    p.add_argument("--workdir", help="data, jobs, workspaces and logs (default: a new temporary folder)")
    p.add_argument("--json", help="write the rows (a JSON list, one per method) here")
    p.add_argument("--markdown", help="write the table as markdown here")
    return p


def apply_profile(p: argparse.ArgumentParser, args, profiles: dict) -> list[int]:
    """Fill the run sizes ``args`` left unset from the quick or full profile; the seeds to run.

    Exits through ``p.error`` when ``--seeds`` is not comma-separated integers.
    """
    profile = profiles["quick" if args.quick else "full"]
    for key in ("rounds", "local_steps", "cases", "size", "test_cases"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    try:
        return [int(s) for s in args.seeds.split(",")] if args.seeds else list(profile["seeds"])
    except ValueError:
        p.error(f"--seeds={args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    seeds = apply_profile(p, args, PROFILES)
    requested = list(DEFAULT_METHODS)
    if args.methods == "all":
        requested = None
    elif args.methods:
        requested = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in requested if m not in METHODS]
        if unknown:
            p.error(f"--methods: unknown {', '.join(unknown)} (valid: {', '.join(METHODS)})")
    if args.sites < 1 or args.rounds < 1:
        p.error("--sites and --rounds must be >= 1")

    import torch

    from fedsegnet.data.synth import synthesize

    t_start = time.perf_counter()
    names, notes = select_methods(requested)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedsegnet-compression-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"methods: {', '.join(names)}; seeds {seeds}; {args.sites} sites x {args.cases} cases ({args.size}^3, "
        f"{args.test_cases} held-out test cases); preset {args.preset}, {args.rounds} rounds x "
        f"{args.local_steps} local steps; workdir {work}"
    )
    for note in notes:
        print(f"  note: {note}")

    runs: dict[str, list[dict]] = {n: [] for n in names}
    for seed in seeds:
        data_root = work / "data" / f"seed{seed}"
        if not (data_root / "test" / "dataset.json").exists():
            synthesize(
                data_root, sites=args.sites, cases=args.cases, size=args.size, seed=seed, test_cases=args.test_cases
            )
        for name in names:
            r = run_one(name, seed, data_root, work / "runs" / f"seed{seed}" / name, args)
            runs[name].append(r)
            if r["ok"]:
                print(
                    f"  seed {seed} {name:<24} up {_fmt(r['bytes_up'])} B/round/site, down {_fmt(r['bytes_down'])} "
                    f"(rounds >= 1: {_fmt(r['bytes_down_after_first'])}), held-out Dice {r['dice']:.3f}, "
                    f"{r['seconds']:.0f} s",
                    flush=True,
                )
            else:
                print(
                    f"  seed {seed} {name:<24} FAILED (exit code {r['rc']}): {r['error']}; log {r['log']}, "
                    f"server log {r['server_log']}",
                    flush=True,
                )
                if r["log_error"]:
                    print(f"      first error in the log: {r['log_error']}", flush=True)
            for e in r["site_errors"]:
                print(f"      site error: {e}", flush=True)

    reference = summarize(REFERENCE, runs[REFERENCE], None)
    rows = [summarize(n, runs[n], reference) for n in names]
    total = time.perf_counter() - t_start
    print()
    print(
        f"bytes: serialized FLARE messages of one site in one round (mean over rounds, sites, seeds); "
        f"Dice: held-out test set, mean ± sd over {len(seeds)} seed(s); ratios vs {REFERENCE}; "
        f"'down r>=1' and 'tot r>=1' leave out round 0's downlink; s/run: simulator wall time"
    )
    print(table_text(rows))
    for r in rows:
        for f in r["failed"]:
            print(f"FAILED {r['method']} seed {f['seed']}: exit code {f['rc']}: {f['error']} (log {f['log']})")
            if f["first_log_error"]:
                print(f"  first error in the log: {f['first_log_error']}")
    print(f"total time {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(
            f"{args.sites} sites, {args.rounds} rounds x {args.local_steps} local steps, preset {args.preset}, "
            f"seeds {seeds}. Bytes: serialized FLARE messages of one site in one round. Dice: held-out test set, "
            f"mean ± sd over seeds. Ratios and ΔDice vs `{REFERENCE}`.\n\n" + table_markdown(rows) + "\n"
        )
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
