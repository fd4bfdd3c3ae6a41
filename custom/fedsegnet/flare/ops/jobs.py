"""Job folders: locate them, set their job args, run them in FLARE's simulator, find what a run left.

Job args are the top-level variables of ``app/config/config_fed_{server,client}.json`` (FLARE
substitutes ``"{name}"`` references with them); :func:`configure_job` copies a job folder and sets
them in every config that declares them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedsegnet.config import check_job, check_job_args
from fedsegnet.errors import ConfigError, FedSegNetError, OutputError, RunError
from fedsegnet.flare.constants import DATA_ROOT_ENV, ROUND_RECORDS_FILE
from fedsegnet.flare.ops.policy import write_site_policy
from fedsegnet.outputs import MARKER, claim_dir, read_marker, seal_dir
from fedsegnet.report import read_records

CONFIG_FILES = ("config_fed_server.json", "config_fed_client.json")
_STRUCTURE_KEYS = {"format_version", "workflows", "components", "executors", "task_result_filters", "task_data_filters"}


def repo_jobs_dir() -> Path | None:
    """``jobs/`` of a source checkout (editable install), or None when fedsegnet runs from a wheel."""
    candidate = Path(__file__).resolve().parents[4] / "jobs"
    return candidate if candidate.is_dir() else None


def _config_paths(job_dir: Path) -> list[Path]:
    if not job_dir.is_dir():
        raise FedSegNetError(f"{job_dir}: no such job folder")
    paths = sorted(job_dir.glob("*/config/config_fed_*.json"))
    if not paths:
        raise FedSegNetError(f"{job_dir}: not a FLARE job folder (no */config/config_fed_*.json)")
    return paths


def read_config(path: Path) -> dict:
    """A job config file as a dict.

    Raises:
        FedSegNetError: the file is not valid JSON (names the file and the line) or not a JSON object.
    """
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise FedSegNetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FedSegNetError(f"{path}: cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise FedSegNetError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    return config


def job_args(job_dir: str | Path) -> dict:
    """The job args (top-level config variables) of a job folder, merged over its configs."""
    args = {}
    for path in _config_paths(Path(job_dir)):
        config = read_config(path)
        args.update({k: v for k, v in config.items() if k not in _STRUCTURE_KEYS})
    return args


def job_arg_conflicts(job_dir: str | Path) -> dict[str, str]:
    """Job args that two configs of a job folder set to different values (a hand edit; ``job set``
    always writes every config that declares an arg): ``{arg: line naming both values and files}``."""
    seen: dict[str, tuple[str, object]] = {}
    out = {}
    for path in _config_paths(Path(job_dir)):
        for key, value in read_config(path).items():
            if key in _STRUCTURE_KEYS:
                continue
            where = f"{path.parent.parent.name}/config/{path.name}"
            if key in seen and seen[key][1] != value:
                out[key] = f"{key}: {seen[key][1]!r} in {seen[key][0]} but {value!r} in {where}"
            seen.setdefault(key, (where, value))
    return out


def check_job_values(src: str | Path, values: dict) -> dict:
    """Check ``values`` for the job folder ``src`` before anything is written.

    Every value must name a job arg of ``src`` and pass its declaration
    (:data:`fedsegnet.config.JOB_ARGS`); then the whole job, with the new values over its current
    ones, passes :func:`fedsegnet.config.check_job` (so a bad value already in the job's config,
    e.g. hand-edited, is refused too).

    Returns:
        the values to write, in their canonical form (``patch_size`` as a list).

    Raises:
        ConfigError: naming the arg, the value and what is allowed.
    """
    known = job_args(src)
    for key, value in values.items():
        if key not in known:
            raise ConfigError(key, value, f"not a job arg of {src}", options=sorted(known))
    checked = check_job_args(values)
    conflicts = {k: line for k, line in job_arg_conflicts(src).items() if k not in checked}
    if conflicts:
        key, line = next(iter(conflicts.items()))
        raise ConfigError(key, known[key], f"{src} disagrees with itself ({line}); set {key} with `fedsegnet job set` to write every config")
    check_job({**known, **checked})
    return checked


def configure_job(src: str | Path, dst: str | Path, *, overwrite: bool = False, **values) -> Path:
    """Copy the job folder ``src`` to ``dst`` and set job args in every config that declares them.

    ``min_clients`` is also written to ``meta.json``.

    Args:
        src: job folder to copy.
        dst: destination folder: created; an existing folder is refused unless it is empty, or
            ``overwrite`` is given and it is a job folder this function wrote (it carries
            :data:`fedsegnet.outputs.MARKER`). Never ``src``, a folder holding it, or one inside it.
        overwrite: replace ``dst`` when it is a job folder written before. Defaults to False.
        **values: job args to set, e.g. ``num_rounds=3, preset="tiny"``.

    Returns:
        ``dst`` as a Path.

    Raises:
        ConfigError: a value names no job arg of ``src`` or fails its declaration in
            :data:`fedsegnet.config.JOB_ARGS` (see :func:`check_job_values`); nothing was written.
        OutputError: ``dst`` is refused (see ``dst``); nothing was written.
        FedSegNetError: ``src`` is not a job folder, or one of its configs is not valid JSON.
    """
    src, dst = Path(src), Path(dst)
    values = check_job_values(src, values)
    claim_dir(dst, "job", overwrite=overwrite, protect=[src], inside_ok=False)
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
    for path in _config_paths(dst):
        config = read_config(path)
        for key, value in values.items():
            if key in config:
                config[key] = list(value) if isinstance(value, tuple) else value
        path.write_text(json.dumps(config, indent=2) + "\n")
    meta_path = dst / "meta.json"
    if "min_clients" in values and meta_path.exists():
        meta = read_config(meta_path)
        meta["min_clients"] = values["min_clients"]
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    seal_dir(dst)
    return dst


def pack_job(src: str | Path, dst: str | Path, *, overwrite: bool = False, **values) -> Path:
    """Like :func:`configure_job`, and put the ``fedsegnet`` package into every app's ``custom/`` folder.

    For deployments that allow custom code in jobs (sites need not install the wheel): FLARE adds
    ``<app>/custom`` to the job's import path, so the components load from the code the job carries.
    Compiled caches (``__pycache__``) are left out.

    Args:
        src: job folder.
        dst: destination folder (see :func:`configure_job`: never an existing folder fedsegnet did not write).
        overwrite: replace ``dst`` when it is a job folder written before. Defaults to False.
        **values: job args to set (see :func:`configure_job`).

    Returns:
        ``dst`` as a Path.

    Raises:
        ConfigError, OutputError, FedSegNetError: see :func:`configure_job`.
    """
    import fedsegnet

    dst = configure_job(src, dst, overwrite=overwrite, **values)
    package = Path(fedsegnet.__file__).resolve().parent
    for app in sorted({p.parent.parent for p in _config_paths(dst)}):
        target = app / "custom" / "fedsegnet"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    seal_dir(dst)
    return dst


class SimulatorRun:
    """A ``nvflare simulator`` process started for one job; stopped by its pid (process group).

    Args:
        job_dir: the job folder.
        workspace: simulator workspace (created; a FedSegNet site policy is written to its ``local/``).
        n_clients: number of sites ``site-1..site-N``.
        threads: sites run in parallel. Defaults to ``n_clients``.
        data_root: exported as ``FEDSEGNET_DATA_ROOT`` to the sites. Defaults to None (inherit).
        log_file: where the simulator's output goes. Defaults to ``<workspace>.simulator.log`` beside
            the workspace (the simulator empties its workspace when it starts).
        overwrite: start in a workspace an earlier run left (it carries
            :data:`fedsegnet.outputs.MARKER` in its ``local/``), replacing it. Defaults to False.

    The simulator deletes everything in its workspace but ``local/`` and ``startup/`` when it
    starts, so :meth:`start` refuses a workspace holding anything else (unless ``overwrite`` and it
    is one a run left), and a log file that a run of this class did not write.

    Raises:
        OutputError: from :meth:`start`, naming the refused workspace or log file.
    """

    def __init__(
        self, job_dir, workspace, n_clients: int, threads: int | None = None, data_root=None, log_file=None,
        overwrite: bool = False,
    ):  # fmt: skip
        self.job_dir = Path(job_dir)
        self.workspace = Path(workspace)
        self.n_clients = int(n_clients)
        self.threads = int(threads or n_clients)
        self.data_root = data_root
        self.log_file = Path(log_file) if log_file else self.workspace.with_name(self.workspace.name + ".simulator.log")
        self.overwrite = bool(overwrite)
        self.proc = None
        self._log = None

    def start(self) -> "SimulatorRun":
        ours = read_marker(self.workspace, "local") is not None
        if self.log_file.exists() and not (self.overwrite and ours):
            raise OutputError(
                f"simulator log {self.log_file}: exists; choose another workspace, or give --overwrite to replace "
                "a run fedsegnet started there"
            )
        claim_dir(self.workspace, "job simulate", overwrite=self.overwrite, protect=[self.job_dir], flag="workspace",
                  keep=("local", "startup"), marker_dir="local")  # fmt: skip
        try:
            write_site_policy(self.workspace / "local", create=True)
        except ValueError as e:  # a resources.json that is not a JSON object
            raise FedSegNetError(str(e)) from None
        env = dict(os.environ)
        if self.data_root is not None:
            env[DATA_ROOT_ENV] = str(Path(self.data_root).resolve())
        cmd = [
            sys.executable, "-m", "nvflare.cli", "simulator", str(self.job_dir),
            "-w", str(self.workspace), "-n", str(self.n_clients), "-t", str(self.threads),
        ]  # fmt: skip
        self._log = open(self.log_file, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def poll(self):
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the simulator to end; on timeout stop it and raise FedSegNetError."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RunError(f"simulator did not finish within {timeout} s; log: {self.log_file}") from None
        finally:
            if self.proc.poll() is not None and self._log:
                self._log.close()

    def stop(self, grace: float = 10.0):
        """Stop the simulator and everything it started (its own process group), by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        if self._log:
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SimResults:
    """Where a simulator run left its results (server side)."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace)
        self.job_root = self.workspace / "server" / "simulate_job"
        self.app = self.job_root / "app_server"

    @property
    def global_model(self) -> Path:
        return self.app / "FL_global_model.pt"

    @property
    def best_model(self) -> Path:
        return self.app / "best_FL_global_model.pt"

    @property
    def cross_site(self) -> Path:
        return self.job_root / "cross_site_val" / "cross_val_results.json"

    @property
    def tb_dir(self) -> Path:
        return self.job_root / "tb_events"

    @property
    def records(self) -> Path:
        return self.job_root / ROUND_RECORDS_FILE

    @property
    def server_log(self) -> Path:
        return self.workspace / "server" / "log.txt"

    def read_records(self) -> list[dict]:
        return read_records(self.records)

    def read_cross_site(self) -> dict:
        if not self.cross_site.exists():
            return {}
        return json.loads(self.cross_site.read_text())


def wait_with_progress(run: SimulatorRun, results: SimResults, timeout: float, on_round=None) -> int:
    """Wait for ``run``, calling ``on_round(record)`` for every new per-round record."""
    seen = 0
    deadline = time.monotonic() + timeout
    while run.poll() is None:
        if time.monotonic() > deadline:
            run.stop()
            raise RunError(f"simulator did not finish within {timeout:.0f} s; log: {run.log_file}")
        records = results.read_records() if results.records.exists() else []
        for rec in records[seen:]:
            if on_round:
                on_round(rec)
        seen = max(seen, len(records))
        time.sleep(0.5)
    for rec in results.read_records()[seen:]:
        if on_round:
            on_round(rec)
    return run.wait()
