"""``fedsegnet`` command line: data, eval, demo, job.

    fedsegnet data synth --out DIR --sites 2 --cases 12 --size 48 --seed 0
    fedsegnet data baseline --data DIR
    fedsegnet eval --model FL_global_model.pt --data DIR/test [--json]
    fedsegnet demo [--workdir W]
    fedsegnet job set JOB --out DIR num_rounds=3 preset=tiny
    fedsegnet job policy WORKSPACE/local
    fedsegnet job simulate JOB -w WS -n 2 [--data-root DATA]

Only this module prints. Errors of the FedSegNet family (and file-system errors) are shown as
one line, and the exit code says what kind of problem it was:

    0  done
    1  a run itself failed (the simulator or a POC job did not complete, or timed out)
    2  usage: a bad flag, a bad setting (ConfigError) or flags that do not go together
    3  data or files: an input that is missing or broken (DataError), or a refused destination

Anything else keeps its traceback. Nothing is overwritten: a destination that exists is refused
unless ``--overwrite`` is given, and even then only an output fedsegnet wrote is replaced; sources
and input scans are never written (:mod:`fedsegnet.outputs`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from fedsegnet.errors import ConfigError, FedSegNetError, RunError, UsageError

EXIT_RUN_FAILED, EXIT_USAGE, EXIT_DATA = 1, 2, 3
EXIT_CODES_HELP = """exit codes:
  0  done
  1  a run failed (simulator, POC job) or timed out
  2  usage: a bad flag or setting, or flags that do not go together
  3  data or files: a missing or broken input, or a refused destination

nothing is overwritten: an existing destination is refused unless --overwrite is given, and even
then only an output fedsegnet wrote is replaced; sources and input scans are never written."""


# ---------------------------------------------------------------------------------------------- data
def _cmd_data_synth(args) -> int:
    from fedsegnet.data.synth import parse_corrupt, parse_site_style, synthesize
    from fedsegnet.outputs import claim_dir

    styles: dict[str, dict] = {}
    for spec in args.style or []:
        site, key, value = parse_site_style(spec)
        styles.setdefault(site, {})[key] = value
    corrupt = [parse_corrupt(spec) for spec in args.corrupt or []]
    orientation = {}
    for spec in args.orientation or []:
        site, _, codes = spec.partition(":")
        orientation[site] = codes
    claim_dir(args.out, "data synth", overwrite=args.overwrite)
    summary = synthesize(
        args.out,
        sites=args.sites,
        cases=args.cases,
        size=args.size,
        seed=args.seed,
        channels=args.channels,
        test_cases=args.test_cases,
        site_styles=styles or None,
        corrupt=corrupt or None,
        orientation=orientation or None,
        progress=sys.stderr.isatty(),
        label_kinds=args.label_kind or None,
        scenario=args.scenario,
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        test = "per-site test sets" if args.scenario == "organs" else "test set"
        print(f"wrote {args.sites} site(s) + {test} to {Path(args.out).resolve()}")
        for site, info in summary["sites"].items():
            if info["host"]:
                print(f"  {site}: {info['host']} host, {info['n_test']} test case(s)")
            if info["label_kind"] != "voxel":
                print(f"  {site}: {info['label_kind']} labels only")
    return 0


def _cmd_data_split(args) -> int:
    from tqdm import tqdm

    from fedsegnet.data.split import read_dataset, split_cases, write_split
    from fedsegnet.outputs import claim_dir

    labels = None
    if args.labels:
        labels = {}
        for item in args.labels.split(","):
            key, sep, name = item.partition(":")
            if not sep or not key.strip().isdigit():
                raise UsageError(f"--labels {args.labels!r}: expected ID:NAME,ID:NAME (e.g. 0:background,1:liver)")
            labels[int(key)] = name.strip()
    source = read_dataset(args.dataset, args.layout, labels, progress=lambda xs: tqdm(xs, desc="reading labels", unit="file"))
    assignment, test = split_cases(
        source.cases, sites=args.sites, scheme=args.scheme, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, alpha=args.alpha, by_column=args.by_column, by_pattern=args.by_pattern,
        seed=args.seed,
    )  # fmt: skip
    claim_dir(args.out, "data split", overwrite=args.overwrite, protect=[args.dataset])
    summary = write_split(source, assignment, test, args.out)
    print(f"{source.name} ({source.layout}, {len(source.cases)} cases) -> {args.out}")
    for site, s in summary["sites"].items():
        print(f"  {site:<16} {s['training']:>4} training {s['validation']:>4} validation")
    print(f"  {'test':<16} {summary['test']:>4} held out (never given to a site)")
    return 0


def _cmd_data_baseline(args) -> int:
    from fedsegnet.data.synth import threshold_baseline

    root = Path(args.data)
    if not root.is_dir():
        raise FedSegNetError(f"--data {args.data}: no such folder")
    sites = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "test")
    if not sites or not (root / "test").is_dir():
        raise FedSegNetError(f"--data {args.data}: expected site folders and test/ (as `fedsegnet data synth` writes)")
    result = threshold_baseline(sites, root / "test")
    print(json.dumps(result, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------- eval
def _fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def print_eval_table(summary: dict, title: str = "") -> None:
    """Print an EvalResult summary (``to_dict()``) as a small table."""
    if title:
        print(title)
    for what, rows in (("class", summary["per_class"]), ("region", summary.get("per_region") or {})):
        if not rows:
            continue
        print(f"  {what:<16}{'Dice':>8}{'HD95 mm':>10}   missing (pred / label / both)")
        for name, row in rows.items():
            print(
                f"  {str(name):<16}{_fmt(row.get('dice')):>8}{_fmt(row.get('hd95'), 2):>10}   "
                f"{row.get('n_missing_pred', 0)} / {row.get('n_missing_label', 0)} / {row.get('n_both_empty', 0)}"
            )
        if what == "class":
            print(f"  {'mean':<16}{_fmt(summary['dice_mean']):>8}{_fmt(summary['hd95_mean'], 2):>10}   ({summary['n_cases']} cases)")
        else:
            print(f"  {'region mean':<16}{_fmt(summary['region_dice_mean']):>8}")


def _cmd_eval(args) -> int:
    from fedsegnet.training.site import evaluate_model_file

    result, spec = evaluate_model_file(args.model, args.data, split=args.split, progress=sys.stderr.isatty(),
                                       personal=args.personal)  # fmt: skip
    summary = result.to_dict()
    if args.json:
        keys = ("dice_mean", "hd95_mean", "per_class", "n_cases", "per_region", "region_dice_mean")
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
    else:
        title = f"{args.model} on {args.data} ({spec['network']}, preset {spec['preset']})"
        if "personal" in spec:
            p = spec["personal"]
            title += f", personalised for {p['site']} ({p['method']}, round {p['round']}: {args.personal})"
        print_eval_table(summary, title)
    return 0


# ---------------------------------------------------------------------------------------------- infer
def _cmd_infer(args) -> int:
    import numpy as np

    from fedsegnet.networks.spec import class_names_of, load_model_file
    from fedsegnet.training.infer import check_output_file, infer_folder, predict_case, save_labels
    from fedsegnet.training.site import pick_device

    if bool(args.image) == bool(args.image_dir):
        raise UsageError("give either --image FILE [FILE ...] (one case) or --image-dir DIR (every case in it)")
    device = pick_device(args.device, "--device")
    if args.image:
        check_output_file(args.out, args.image, overwrite=args.overwrite)
    elif not Path(args.image_dir).is_dir():
        raise FedSegNetError(f"--image-dir {args.image_dir}: no such folder")
    model, spec = load_model_file(args.model)
    if args.personal:
        from fedsegnet.training.personal import apply_personal_state

        state = apply_personal_state(model, args.personal)
        print(f"personalised for {state['site']} ({state['method']}, round {state['round']}): {args.personal}")
    if args.preset and args.preset != spec.get("preset"):
        raise UsageError(
            f"--preset {args.preset!r} does not match the model {args.model}: it was trained with preset "
            f"{spec.get('preset')!r} (network {spec.get('network')!r}); leave --preset out to use the model's own"
        )
    if args.image:
        labels, ref = predict_case(model, spec, args.image, device=device)
        out = save_labels(labels, ref, args.out)
        names = dict(zip(spec.get("label_values") or range(spec["num_classes"]), class_names_of(spec)))
        counts = ", ".join(f"{v} {names.get(int(v), '?')}: {int(n)}" for v, n in zip(*np.unique(labels, return_counts=True)))
        print(f"wrote {out} (shape {labels.shape}; voxels per label value: {counts})")
        return 0
    from tqdm import tqdm

    written = infer_folder(model, spec, args.image_dir, args.out, device=device, overwrite=args.overwrite,
                           progress=lambda xs: tqdm(xs, desc="cases", unit="case"))  # fmt: skip
    print(f"wrote {len(written)} segmentation(s) to {args.out}")
    return 0


def _cmd_report(args) -> int:
    from fedsegnet.outputs import claim_dir
    from fedsegnet.report import build_report, find_run
    from fedsegnet.training.site import pick_device

    if args.device:
        pick_device(args.device, "--device")
    find_run(args.run)  # a run folder without records is refused before anything is written
    claim_dir(args.out, "report", overwrite=args.overwrite, protect=[args.run] + ([args.data] if args.data else []))
    page = build_report(args.run, args.out, data_dir=args.data, device=args.device)
    print(f"report written to {page} (figures and report.json beside it)")
    return 0


# ---------------------------------------------------------------------------------------------- job
def _parse_values(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            from fedsegnet.errors import UsageError

            raise UsageError(f"job arg {pair!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def _cmd_job_set(args) -> int:
    from fedsegnet.flare.ops.jobs import configure_job

    dst = configure_job(args.job, args.out, overwrite=args.overwrite, **_parse_values(args.values))
    print(f"job written to {dst}")
    return 0


def _cmd_job_pack(args) -> int:
    from fedsegnet.flare.ops.jobs import pack_job

    dst = pack_job(args.job, args.out, overwrite=args.overwrite, **_parse_values(args.values))
    print(f"job with the fedsegnet code in app/custom written to {dst}")
    return 0


def _cmd_job_args(args) -> int:
    from fedsegnet.config import JOB_ARGS
    from fedsegnet.errors import ConfigError
    from fedsegnet.flare.ops.jobs import job_arg_conflicts, job_args

    current = job_args(args.job)
    rows = [("job arg", "value", "default", "allowed", "what it does")]
    problems = list(job_arg_conflicts(args.job).values())
    for name, value in current.items():
        decl = JOB_ARGS.get(name)
        if decl is None:
            rows.append((name, json.dumps(value), "?", "not declared", ""))
            problems.append(f"{name}: not a declared job arg")
            continue
        try:
            decl.check(value)
        except ConfigError as e:
            problems.append(str(e))
        mark = "" if value == decl.default or (value == [] and decl.default == []) else " *"
        rows.append((name, json.dumps(value) + mark, json.dumps(decl.default), decl.describe(), decl.help))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print(f"({len(current)} job args of {args.job}; * = differs from the default; set with `fedsegnet job set {args.job} --out DIR KEY=VALUE`)")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 2 if problems else 0


def _cmd_job_policy(args) -> int:
    from fedsegnet.flare.ops.policy import write_site_policy

    try:
        path = write_site_policy(args.local_dir)
    except ValueError as e:  # the existing resources.json is not a JSON object; names it
        raise FedSegNetError(str(e)) from None
    print(f"site policy written to {path} (entries already there kept)")
    return 0


def _cmd_job_simulate(args) -> int:
    from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun

    run = SimulatorRun(args.job, args.workspace, args.n_clients, args.threads, data_root=args.data_root, overwrite=args.overwrite)
    print(f"simulating {args.job} with {args.n_clients} site(s); log: {run.log_file}")
    with run:
        rc = run.wait(timeout=args.timeout or None)
    res = SimResults(args.workspace)
    print(f"simulator exit code {rc}; global model: {res.global_model}; TensorBoard: {res.tb_dir}")
    return 0 if rc == 0 else 1


def _cmd_job_resume(args) -> int:
    from fedsegnet.flare.ops.jobs import configure_job, job_args
    from fedsegnet.flare.resume import check_job_id

    check_job_id(args.from_job, "--from")
    if "resume_from" not in job_args(args.job):
        raise UsageError(f"{args.job}: the job has no job arg 'resume_from' (it cannot resume)")
    dst = configure_job(args.job, args.out, overwrite=args.overwrite, **{**_parse_values(args.values), "resume_from": args.from_job})
    print(f"job continuing {args.from_job} written to {dst}; submit it to the same server")
    return 0


# ---------------------------------------------------------------------------------------------- poc
def _poc_sites(args) -> list[str]:
    return list(args.site) if args.site else [f"site-{i + 1}" for i in range(args.sites)]


def _prepared_poc(args):
    """A POC system from the `prepare`/`run` flags, prepared (an existing workspace only with --overwrite)."""
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem(
        args.workspace, _poc_sites(args), data_root=args.data_root, fed_learn_port=args.fed_learn_port,
        admin_port=args.admin_port,
    )  # fmt: skip
    return poc.prepare(privacy_policy=args.privacy, overwrite=args.overwrite)


def _cmd_poc_prepare(args) -> int:
    poc = _prepared_poc(args)
    print(f"POC workspace {poc.workspace}: server + {', '.join(poc.sites)}; startup kits in {poc.prod_dir}")
    if args.privacy:
        print(f"site privacy policy {args.privacy} placed in every site's local/privacy.json")
    print(f"admin console: {poc.kit(poc.admin) / 'startup' / 'fl_admin.sh'} (user {poc.admin})")
    return 0


def _cmd_poc_start(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    poc.start(timeout=args.timeout)
    print(f"running: {', '.join(f'{n} (pid {p})' for n, p in poc.pids.items())}; all sites connected")
    print(f"logs: {poc.log('server')}, {', '.join(str(poc.log(s)) for s in poc.sites)}")
    return 0


def _cmd_poc_status(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    running = poc.running()
    for name in ["server", *poc.sites]:
        state = "running" if running.get(name) else "not running"
        print(f"{name:<12} {state}" + (f" (pid {poc.pids[name]})" if name in poc.pids else ""))
    if running.get("server"):
        with poc.session() as s:
            print(f"connected sites: {', '.join(sorted(c.name for c in s.get_connected_client_list())) or 'none'}")
            for job in s.list_jobs():
                print(f"job {job.get('job_id')}: {job.get('status')} ({job.get('name')})")
    return 0


def _wait_and_report(poc, job_id: str, rounds, timeout: float, download: str | None) -> int:
    def on_round(rec):
        for line in round_lines(rec, rounds or "?"):
            print(line, flush=True)

    status = poc.wait(job_id, timeout=timeout, on_round=on_round)
    print(f"job {job_id}: {status}")
    if download:
        print(f"result downloaded to {poc.download(job_id, download)}")
    return 0 if status == "FINISHED:COMPLETED" else 1


def _claim_download(args) -> None:
    """Claim the --download folder before a job is submitted (a refused one fails fast)."""
    from fedsegnet.outputs import claim_dir

    claim_dir(args.download, "poc download", overwrite=args.overwrite, protect=[args.job], flag="--download")


def _submit(poc, job: str, values: dict) -> tuple[str, int | None]:
    from fedsegnet.flare.ops.jobs import configure_job, job_args

    path = Path(job)
    if values:
        path = configure_job(path, poc.workspace / "jobs" / path.name, **values)
    job_id = poc.submit(path)
    return job_id, job_args(path).get("num_rounds")


def _cmd_poc_submit(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    if args.download:
        _claim_download(args)
    job_id, rounds = _submit(poc, args.job, _parse_values(args.values))
    print(f"submitted {args.job} as job {job_id}")
    if not (args.wait or args.download):
        return 0
    return _wait_and_report(poc, job_id, rounds, args.timeout, args.download)


def _cmd_poc_stop(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    names = sorted(n for n, alive in poc.running().items() if alive)
    poc.stop()
    print(f"stopped: {', '.join(names) or 'nothing was running'}")
    return 0


def _cmd_poc_run(args) -> int:
    if args.download:
        _claim_download(args)
    poc = _prepared_poc(args)
    print(f"[1/3] POC prepared in {poc.workspace}; starting server and {', '.join(poc.sites)}")
    with poc:
        poc.start(timeout=args.timeout)
        job_id, rounds = _submit(poc, args.job, _parse_values(args.values))
        print(f"[2/3] job {job_id} submitted through the admin API")
        rc = _wait_and_report(poc, job_id, rounds, args.timeout, args.download or str(poc.workspace / "results"))
        print("[3/3] stopping server and sites")
    return rc


# ---------------------------------------------------------------------------------------------- demo
def round_lines(rec: dict, rounds: int) -> list[str]:
    """What the demo prints for one round record: Dice, bytes, AAM weights (or drops), site errors."""
    lines = [
        f"      round {rec['round'] + 1}/{rounds}: val Dice of the received global model "
        f"{_fmt(rec.get('val_dice_global'))}, of the local models {_fmt(rec.get('val_dice_local'))} "
        f"({_fmt(rec.get('seconds'), 1)} s)"
        + (
            f", {rec['bytes_up'] / 1e3:,.0f} kB up and {rec['bytes_down'] / 1e3:,.0f} kB down (all sites)"
            if "bytes_up" in rec
            else ""
        )
    ]
    aggregation = {s: v["aggregation"] for s, v in rec.get("sites", {}).items() if v.get("aggregation")}
    if aggregation:
        lines.append("        AAM weights: " + ", ".join(
            f"{s} {a['weight']:.2f}" if a.get("accepted") else f"{s} dropped ({a.get('gate')})"
            for s, a in aggregation.items()
        ))  # fmt: skip
    lines += [f"      ERROR from {err['site']}: {err['message']}" for err in rec.get("errors", [])]
    return lines


def _cmd_demo(args) -> int:
    from fedsegnet.data.synth import synthesize
    from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job, repo_jobs_dir, wait_with_progress
    from fedsegnet.training.site import evaluate_model_file

    from fedsegnet.outputs import claim_dir

    t0 = time.perf_counter()
    claim_dir(args.workdir, "demo", overwrite=args.overwrite, flag="--workdir")  # replaced as a whole when it is one
    work = Path(args.workdir).resolve()
    data, job, ws = work / "data", work / "job" / args.job, work / "workspace"
    print(f"[1/4] synthetic data: {args.sites} sites x {args.cases} cases, {args.size}^3 voxels -> {data}")
    synthesize(
        data, sites=args.sites, cases=args.cases, size=args.size, seed=args.seed, test_cases=args.test_cases
    )
    jobs = repo_jobs_dir()
    job_args = dict(
        num_rounds=args.rounds,
        min_clients=args.sites,
        preset=args.preset,
        local_steps=args.local_steps,
        seed=args.seed,
        torch_threads=args.torch_threads,
    )
    if jobs is not None:
        configure_job(jobs / args.job, job, **job_args)
    else:  # installed from a wheel: the same job, generated by the Recipe
        from fedsegnet.flare.recipe import FedSegNetFedAvgRecipe, FedSegNetRecipe

        recipe = FedSegNetRecipe if args.job == "fedsegnet" else FedSegNetFedAvgRecipe
        recipe(name=args.job, **job_args).export(str(job.parent))
    print(
        f"[2/4] nvflare simulator, job {args.job}: {args.rounds} rounds x {args.local_steps} local steps, "
        f"preset {args.preset}"
    )
    print(f"      (FLARE log: {ws.with_name(ws.name + '.simulator.log')})")
    res = SimResults(ws)

    def on_round(rec):
        for line in round_lines(rec, args.rounds):
            print(line, flush=True)

    with SimulatorRun(job, ws, args.sites, args.sites, data_root=data) as run:
        rc = wait_with_progress(run, res, timeout=args.timeout, on_round=on_round)
    if rc != 0 or not res.global_model.exists():
        print(f"simulator failed (exit code {rc}); see {run.log_file} and {res.server_log}", file=sys.stderr)
        return 1
    t_fl = time.perf_counter() - t0
    print(f"[3/4] held-out test set ({data / 'test'}): global model after {args.rounds} rounds")
    result, _ = evaluate_model_file(res.global_model, data / "test")
    summary = result.to_dict()
    print_eval_table(summary)
    cross = res.read_cross_site()
    if cross:
        print("[4/4] cross-site evaluation (val Dice; rows: evaluating site, columns: model):")
        models = sorted({m for row in cross.values() for m in row})
        print("  " + " " * 10 + "".join(f"{m:>24}" for m in models))
        for site, row in sorted(cross.items()):
            cells = "".join(f"{_fmt((row.get(m) or {}).get('val_dice')):>24}" for m in models)
            print(f"  {site:<10}{cells}")
    total = time.perf_counter() - t0
    print()
    print(f"held-out mean Dice {_fmt(summary['dice_mean'])}, mean HD95 {_fmt(summary['hd95_mean'], 2)} mm")
    print(f"time: {total:.0f} s in all ({t_fl:.0f} s data + federated training)")
    print(f"global model:  {res.global_model}")
    print(f"best model:    {res.best_model} (selected on the sites' validation Dice)")
    print(f"per-round log: {res.records}")
    print(f"TensorBoard:   tensorboard --logdir {res.tb_dir}")
    (work / "demo_result.json").write_text(
        json.dumps({"seconds": total, "test": summary, "rounds": res.read_records()}, indent=2)
    )
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedsegnet", description="Federated 3D segmentation on NVIDIA FLARE", epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = p.add_subparsers(dest="command", required=True)

    def _overwrite(q, what="--out"):
        q.add_argument(
            "--overwrite", action="store_true",
            help=f"replace {what} when fedsegnet wrote it before (an existing one is refused otherwise; "
                 "folders fedsegnet did not write and the inputs are never touched)",
        )  # fmt: skip

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write synthetic multi-site NIfTI data")
    s.add_argument("--out", required=True)
    s.add_argument("--sites", type=int, default=2)
    s.add_argument("--cases", type=int, default=12, help="cases per site (training + validation)")
    s.add_argument("--size", type=int, default=48, help="volume edge in voxels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--channels", type=int, default=1, help="image channels (e.g. 4 like BraTS)")
    s.add_argument("--test-cases", type=int, default=8)
    s.add_argument("--style", action="append", help="per-site knob SITE:KEY:VALUE, e.g. site-2:intensity_scale:1.3")
    s.add_argument("--corrupt", action="append", help="label corruption SITE:KIND:AMOUNT, e.g. site-3:label_noise:0.5")
    s.add_argument("--orientation", action="append", help="store a site in other axes, e.g. site-2:LPS")
    s.add_argument("--label-kind", help="weaker labels per site, e.g. site-2:box,site-3:tag,site-4:partial:1 (true masks not written)")
    s.add_argument("--scenario", choices=("default", "organs"), default="default", help="organs: a different host organ per site, per-site test sets")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    _overwrite(s)
    s.set_defaults(func=_cmd_data_synth)
    sp = data.add_parser("split", help="per-site datalists from a dataset folder (MSD, ACDC, image/label pairs); no copying")
    sp.add_argument("dataset")
    sp.add_argument("--out", required=True)
    sp.add_argument("--layout", choices=("auto", "msd", "acdc", "brats", "pairs"), default="auto")
    sp.add_argument("--scheme", choices=("iid", "dirichlet", "by"), default="iid")
    sp.add_argument("--sites", type=int, default=2, help="number of sites (iid, dirichlet)")
    sp.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more unequal sizes)")
    sp.add_argument("--by-column", help="metadata column whose values are the sites (e.g. ACDC's Group)")
    sp.add_argument("--by-pattern", help="regex with (?P<site>...) on file names (e.g. '^(?P<site>[A-Z]+)_')")
    sp.add_argument("--test-fraction", type=float, default=0.2)
    sp.add_argument("--val-fraction", type=float, default=0.2)
    sp.add_argument("--labels", help="class names for the pairs layout, e.g. 0:background,1:liver,2:tumour")
    sp.add_argument("--seed", type=int, default=0)
    _overwrite(sp)
    sp.set_defaults(func=_cmd_data_split)
    b = data.add_parser("baseline", help="Dice of a per-class intensity-threshold baseline")
    b.add_argument("--data", required=True, help="folder with site-*/ and test/")
    b.set_defaults(func=_cmd_data_baseline)

    e = sub.add_parser("eval", help="evaluate a saved global model on a dataset.json folder")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", choices=("test", "validation", "training"))
    e.add_argument("--json", action="store_true")
    e.add_argument("--personal", metavar="SITE_STATE",
                   help="a site's personal state (<site job workspace>/fedsegnet_personal/<site>.pt): evaluate that site's personalised model")
    e.set_defaults(func=_cmd_eval)

    i = sub.add_parser("infer", help="segment NIfTI image(s) with a saved model; output on the input's grid")
    i.add_argument("--model", required=True, help="a saved global model (FL_global_model.pt)")
    i.add_argument("--image", nargs="+", help="one case: one file per channel, in training order")
    i.add_argument("--image-dir", help="every case in a folder (several channels: <case>_0000.nii.gz, <case>_0001...)")
    i.add_argument("--out", required=True, help="output file (--image) or folder (--image-dir)")
    i.add_argument("--preset", help="check that the model was trained with this preset")
    i.add_argument("--device", help="torch device (default: cuda when available)")
    i.add_argument("--personal", metavar="SITE_STATE", help="a site's personal state: segment with that site's personalised model")
    _overwrite(i)
    i.set_defaults(func=_cmd_infer)

    r = sub.add_parser("report", help="figures + HTML page from a simulator workspace or a downloaded job result")
    r.add_argument("run", help="simulator workspace, downloaded job result, or server job folder")
    r.add_argument("--out", required=True)
    r.add_argument("--data", help="held-out test folder (dataset.json): per-class table and slices of a test case")
    r.add_argument("--device", help="torch device for --data (default: cuda when available)")
    _overwrite(r)
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("demo", help="synthetic sites -> nvflare simulator -> held-out evaluation")
    d.add_argument("--workdir", default="fedsegnet-demo")
    d.add_argument(
        "--job", choices=("fedsegnet", "fedavg"), default="fedsegnet",
        help="fedsegnet: compressed updates both ways, bytes measured; fedavg: the uncompressed baseline",
    )  # fmt: skip
    d.add_argument("--sites", type=int, default=2)
    d.add_argument("--cases", type=int, default=12)
    d.add_argument("--test-cases", type=int, default=8)
    d.add_argument("--size", type=int, default=48)
    d.add_argument("--rounds", type=int, default=6)
    d.add_argument("--local-steps", type=int, default=40)
    d.add_argument("--preset", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--torch-threads", type=int, default=1, help="torch threads per site")
    d.add_argument("--timeout", type=float, default=1800)
    _overwrite(d, "--workdir")
    d.set_defaults(func=_cmd_demo)

    j = sub.add_parser("job", help="job folders").add_subparsers(dest="job_command", required=True)
    js = j.add_parser("set", help="copy a job folder and set job args KEY=VALUE")
    js.add_argument("job")
    js.add_argument("--out", required=True)
    js.add_argument("values", nargs="*")
    _overwrite(js)
    js.set_defaults(func=_cmd_job_set)
    jk = j.add_parser("pack", help="like `set`, and carry the fedsegnet code in the job (app/custom)")
    jk.add_argument("job")
    jk.add_argument("--out", required=True)
    jk.add_argument("values", nargs="*")
    _overwrite(jk)
    jk.set_defaults(func=_cmd_job_pack)
    ja = j.add_parser("args", help="list a job's args: value, default, allowed values, what each does")
    ja.add_argument("job", help="job folder, e.g. jobs/fedsegnet")
    ja.set_defaults(func=_cmd_job_args)
    jp = j.add_parser("policy", help="admit FedSegNet's components in a site's local/resources.json (entries there are kept)")
    jp.add_argument("local_dir")
    jp.set_defaults(func=_cmd_job_policy)
    jr = j.add_parser("simulate", help="run a job in nvflare simulator (writes the site policy first)")
    jr.add_argument("job")
    jr.add_argument("-w", "--workspace", required=True)
    jr.add_argument("-n", "--n-clients", type=int, default=2)
    jr.add_argument("-t", "--threads", type=int, default=None)
    jr.add_argument("--data-root")
    jr.add_argument("--timeout", type=float, default=0)
    _overwrite(jr, "the workspace")
    jr.set_defaults(func=_cmd_job_simulate)
    ju = j.add_parser("resume", help="copy a job folder set to continue an interrupted job of the same server")
    ju.add_argument("job")
    ju.add_argument("--from", dest="from_job", required=True, help="id of the interrupted job")
    ju.add_argument("--out", required=True)
    ju.add_argument("values", nargs="*")
    _overwrite(ju)
    ju.set_defaults(func=_cmd_job_resume)

    poc = sub.add_parser("poc", help="FLARE POC mode on this machine").add_subparsers(dest="poc_command", required=True)

    def _ws(q):
        q.add_argument("-w", "--workspace", default="fedsegnet-poc", help="POC workspace (default: ./fedsegnet-poc)")

    def _layout(q):
        q.add_argument("-n", "--sites", type=int, default=2, help="number of sites site-1..site-N")
        q.add_argument("--site", action="append", help="a site name (repeat; overrides --sites)")
        q.add_argument("--data-root", help="folder with one data folder per site (FEDSEGNET_DATA_ROOT of each site)")
        q.add_argument("--fed-learn-port", type=int, default=8002)
        q.add_argument("--admin-port", type=int, default=8003)
        q.add_argument("--privacy", help="a site privacy policy (e.g. poc/privacy.json) placed at every site")

    pp = poc.add_parser("prepare", help="startup kits for a server, N sites and an admin (a new workspace)")
    _ws(pp)
    _layout(pp)
    _overwrite(pp, "the workspace")
    pp.set_defaults(func=_cmd_poc_prepare)
    ps = poc.add_parser("start", help="start server and sites; wait until all sites are connected")
    _ws(ps)
    ps.add_argument("--timeout", type=float, default=180)
    ps.set_defaults(func=_cmd_poc_start)
    pt = poc.add_parser("status", help="processes, connected sites and jobs")
    _ws(pt)
    pt.set_defaults(func=_cmd_poc_status)
    pj = poc.add_parser("submit", help="submit a job folder through the admin API (KEY=VALUE sets job args)")
    _ws(pj)
    pj.add_argument("job")
    pj.add_argument("values", nargs="*")
    pj.add_argument("--wait", action="store_true", help="wait for the job, printing each round")
    pj.add_argument("--download", help="download the result here when it finished (implies --wait)")
    pj.add_argument("--timeout", type=float, default=3600)
    _overwrite(pj, "--download")
    pj.set_defaults(func=_cmd_poc_submit)
    pk = poc.add_parser("stop", help="stop the server and sites this workspace started (by their pids)")
    _ws(pk)
    pk.set_defaults(func=_cmd_poc_stop)
    pr = poc.add_parser("run", help="prepare, start, submit JOB, wait, download, stop: one command")
    _ws(pr)
    _layout(pr)
    pr.add_argument("job")
    pr.add_argument("values", nargs="*")
    pr.add_argument("--download", help="where the result goes (default: <workspace>/results)")
    pr.add_argument("--timeout", type=float, default=3600)
    _overwrite(pr, "the workspace and --download")
    pr.set_defaults(func=_cmd_poc_run)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `job set/pack JOB --out DIR KEY=VALUE ...`: argparse stops filling `values` at --out; take the rest
    if extra and isinstance(getattr(args, "values", None), list) and all("=" in x and not x.startswith("-") for x in extra):
        args.values += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fedsegnet.outputs import forget_claims, release_claims, seal_claimed

    forget_claims()  # only this command's own folders are sealed when it succeeds
    try:
        rc = args.func(args)
        if rc == 0:
            seal_claimed()  # the command is done: --overwrite may later replace exactly what it wrote
        return rc
    except FedSegNetError as e:
        release_claims()  # a folder it created and left empty goes again
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except OSError as e:  # a file the command reads or writes (the message names it)
        release_claims()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA


def exit_code(error: FedSegNetError) -> int:
    """The exit code for an error: 2 usage/settings, 1 a failed run, 3 data and files (see the module docstring)."""
    if isinstance(error, (ConfigError, UsageError)):
        return EXIT_USAGE
    if isinstance(error, RunError):
        return EXIT_RUN_FAILED
    return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
