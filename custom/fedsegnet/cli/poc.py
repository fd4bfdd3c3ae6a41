"""``fedsegnet poc prepare | start | status | submit | stop | run``: FLARE POC mode on this machine."""

from __future__ import annotations

from pathlib import Path

from fedsegnet.cli.args import add_overwrite, parse_values
from fedsegnet.cli.display import round_lines


def register(sub) -> None:
    """Add the ``poc`` command and its sub-commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    poc = sub.add_parser("poc", help="FLARE POC mode on this machine").add_subparsers(dest="poc_command", required=True)

    def _ws(q):
        q.add_argument("-w", "--workspace", default="fedsegnet-poc", help="POC workspace (default: ./fedsegnet-poc)")

    def _layout(q):
        q.add_argument("-n", "--sites", type=int, default=2, help="number of sites site-1..site-N")
        q.add_argument("--site", action="append", help="a site name (repeat; overrides --sites)")
        q.add_argument("--data-root", help="folder with one data folder per site (FEDSEGNET_DATA_ROOT of each site)")
        q.add_argument("--fed-learn-port", type=int, default=8002, help="the server's port for the sites")
        q.add_argument("--admin-port", type=int, default=8003, help="the server's port for the admin API")
        q.add_argument("--privacy", help="a site privacy policy (e.g. poc/privacy.json) placed at every site")

    pp = poc.add_parser("prepare", help="startup kits for a server, N sites and an admin (a new workspace)")
    _ws(pp)
    _layout(pp)
    add_overwrite(pp, "the workspace")
    pp.set_defaults(func=_cmd_prepare)
    ps = poc.add_parser("start", help="start server and sites; wait until all sites are connected")
    _ws(ps)
    ps.add_argument("--timeout", type=float, default=180, help="seconds to wait for every site to connect")
    ps.set_defaults(func=_cmd_start)
    pt = poc.add_parser("status", help="processes, connected sites and jobs")
    _ws(pt)
    pt.set_defaults(func=_cmd_status)
    pj = poc.add_parser("submit", help="submit a job folder through the admin API (KEY=VALUE sets job args)")
    _ws(pj)
    pj.add_argument("job", help="the job folder, e.g. jobs/fedsegnet")
    pj.add_argument("values", nargs="*", help="job args KEY=VALUE, set on a copy of JOB")
    pj.add_argument("--wait", action="store_true", help="wait for the job, printing each round")
    pj.add_argument("--download", help="download the result here when it finished (implies --wait)")
    pj.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job (with --wait)")
    add_overwrite(pj, "--download")
    pj.set_defaults(func=_cmd_submit)
    pk = poc.add_parser("stop", help="stop the server and sites this workspace started (by their pids)")
    _ws(pk)
    pk.set_defaults(func=_cmd_stop)
    pr = poc.add_parser("run", help="prepare, start, submit JOB, wait, download, stop: one command")
    _ws(pr)
    _layout(pr)
    pr.add_argument("job", help="the job folder, e.g. jobs/fedsegnet")
    pr.add_argument("values", nargs="*", help="job args KEY=VALUE, set on a copy of JOB")
    pr.add_argument("--download", help="where the result goes (default: <workspace>/results)")
    pr.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    add_overwrite(pr, "the workspace and --download")
    pr.set_defaults(func=_cmd_run)


def _sites(args) -> list[str]:
    return list(args.site) if args.site else [f"site-{i + 1}" for i in range(args.sites)]


def _prepared(args):
    """A POC system from the `prepare`/`run` flags, prepared (an existing workspace only with --overwrite)."""
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem(
        args.workspace, _sites(args), data_root=args.data_root, fed_learn_port=args.fed_learn_port,
        admin_port=args.admin_port,
    )  # fmt: skip
    return poc.prepare(privacy_policy=args.privacy, overwrite=args.overwrite)


def _cmd_prepare(args) -> int:
    poc = _prepared(args)
    print(f"POC workspace {poc.workspace}: server + {', '.join(poc.sites)}; startup kits in {poc.prod_dir}")
    if args.privacy:
        print(f"site privacy policy {args.privacy} placed in every site's local/privacy.json")
    print(f"admin console: {poc.kit(poc.admin) / 'startup' / 'fl_admin.sh'} (user {poc.admin})")
    return 0


def _cmd_start(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    poc.start(timeout=args.timeout)
    print(f"running: {', '.join(f'{n} (pid {p})' for n, p in poc.pids.items())}; all sites connected")
    print(f"logs: {poc.log('server')}, {', '.join(str(poc.log(s)) for s in poc.sites)}")
    return 0


def _cmd_status(args) -> int:
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


def _cmd_submit(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    if args.download:
        _claim_download(args)
    job_id, rounds = _submit(poc, args.job, parse_values(args.values))
    print(f"submitted {args.job} as job {job_id}")
    if not (args.wait or args.download):
        return 0
    return _wait_and_report(poc, job_id, rounds, args.timeout, args.download)


def _cmd_stop(args) -> int:
    from fedsegnet.flare.ops.poc import PocSystem

    poc = PocSystem.load(args.workspace)
    names = sorted(n for n, alive in poc.running().items() if alive)
    poc.stop()
    print(f"stopped: {', '.join(names) or 'nothing was running'}")
    return 0


def _cmd_run(args) -> int:
    if args.download:
        _claim_download(args)
    poc = _prepared(args)
    print(f"[1/3] POC prepared in {poc.workspace}; starting server and {', '.join(poc.sites)}")
    with poc:
        poc.start(timeout=args.timeout)
        job_id, rounds = _submit(poc, args.job, parse_values(args.values))
        print(f"[2/3] job {job_id} submitted through the admin API")
        rc = _wait_and_report(poc, job_id, rounds, args.timeout, args.download or str(poc.workspace / "results"))
        print("[3/3] stopping server and sites")
    return rc
