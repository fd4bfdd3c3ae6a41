"""``fedsegnet job set | pack | args | policy | simulate | resume``: edit job folders and run them in the simulator."""

from __future__ import annotations

import json
import sys

from fedsegnet.cli.args import add_overwrite, parse_values
from fedsegnet.errors import ConfigError, FedSegNetError, UsageError


def register(sub) -> None:
    """Add the ``job`` command and its sub-commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    j = sub.add_parser("job", help="job folders").add_subparsers(dest="job_command", required=True)
    for name, text, func in (
        ("set", "copy a job folder and set job args KEY=VALUE", _cmd_set),
        ("pack", "like `set`, and carry the fedsegnet code in the job (app/custom)", _cmd_pack),
    ):
        q = j.add_parser(name, help=text)
        q.add_argument("job", help="the job folder to copy, e.g. jobs/fedsegnet")
        q.add_argument("--out", required=True, help="the new job folder")
        q.add_argument("values", nargs="*", help="job args KEY=VALUE (fedsegnet job args JOB lists them)")
        add_overwrite(q)
        q.set_defaults(func=func)
    ja = j.add_parser("args", help="list a job's args: value, default, allowed values, what each does")
    ja.add_argument("job", help="job folder, e.g. jobs/fedsegnet")
    ja.set_defaults(func=_cmd_args)
    jp = j.add_parser("policy", help="admit FedSegNet's components in a site's local/resources.json (entries there are kept)")
    jp.add_argument("local_dir", help="a FLARE kit's local/ folder (beside its startup/), or a simulator workspace's <workspace>/local")
    jp.add_argument("--create", action="store_true",
                    help="create LOCAL_DIR (named local) when missing: a simulator workspace before its first run (default: refuse)")
    jp.set_defaults(func=_cmd_policy)
    jr = j.add_parser("simulate", help="run a job in nvflare simulator (writes the site policy first)")
    jr.add_argument("job", help="the job folder, e.g. jobs/fedsegnet")
    jr.add_argument("-w", "--workspace", required=True, help="simulator workspace (new, or one fedsegnet ran before with --overwrite)")
    jr.add_argument("-n", "--n-clients", type=int, default=2, help="number of sites site-1..site-N")
    jr.add_argument("-t", "--threads", type=int, default=None, help="sites run in parallel (default: all)")
    jr.add_argument("--data-root", help="folder with one data folder per site (default: FEDSEGNET_DATA_ROOT)")
    jr.add_argument("--timeout", type=float, default=0, help="seconds before the run is stopped (0: no limit)")
    add_overwrite(jr, "the workspace")
    jr.set_defaults(func=_cmd_simulate)
    ju = j.add_parser("resume", help="copy a job folder set to continue an interrupted job of the same server")
    ju.add_argument("job", help="the job folder the interrupted job was made from")
    ju.add_argument("--from", dest="from_job", required=True, help="id of the interrupted job")
    ju.add_argument("--out", required=True, help="the new job folder")
    ju.add_argument("values", nargs="*", help="more job args KEY=VALUE")
    add_overwrite(ju)
    ju.set_defaults(func=_cmd_resume)


def _cmd_set(args) -> int:
    from fedsegnet.flare.ops.jobs import configure_job

    dst = configure_job(args.job, args.out, overwrite=args.overwrite, **parse_values(args.values))
    print(f"job written to {dst}")
    return 0


def _cmd_pack(args) -> int:
    from fedsegnet.flare.ops.jobs import pack_job

    dst = pack_job(args.job, args.out, overwrite=args.overwrite, **parse_values(args.values))
    print(f"job with the fedsegnet code in app/custom written to {dst}")
    return 0


def _cmd_args(args) -> int:
    from fedsegnet.config import JOB_ARGS
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


def _cmd_policy(args) -> int:
    from fedsegnet.flare.ops.policy import write_site_policy

    try:
        path = write_site_policy(args.local_dir, create=args.create)
    except ValueError as e:  # the existing resources.json is not a JSON object; names it
        raise FedSegNetError(str(e)) from None
    print(f"site policy written to {path} (entries already there kept)")
    return 0


def _cmd_simulate(args) -> int:
    from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun

    run = SimulatorRun(args.job, args.workspace, args.n_clients, args.threads, data_root=args.data_root, overwrite=args.overwrite)
    print(f"simulating {args.job} with {args.n_clients} site(s); log: {run.log_file}")
    with run:
        rc = run.wait(timeout=args.timeout or None)
    res = SimResults(args.workspace)
    print(f"simulator exit code {rc}; global model: {res.global_model}; TensorBoard: {res.tb_dir}")
    return 0 if rc == 0 else 1


def _cmd_resume(args) -> int:
    from fedsegnet.flare.ops.jobs import configure_job, job_args
    from fedsegnet.flare.resume import check_job_id

    check_job_id(args.from_job, "--from")
    if "resume_from" not in job_args(args.job):
        raise UsageError(f"{args.job}: the job has no job arg 'resume_from' (it cannot resume)")
    dst = configure_job(args.job, args.out, overwrite=args.overwrite, **{**parse_values(args.values), "resume_from": args.from_job})
    print(f"job continuing {args.from_job} written to {dst}; submit it to the same server")
    return 0
