"""FLARE POC mode on one machine: prepare startup kits, start server and sites, drive jobs through the admin API.

:class:`PocSystem` is what ``fedsegnet poc ...`` and the POC tests use. It

- writes a provisioning project (server, N sites, one project admin) and runs ``nvflare poc prepare``
  on it, so every participant gets a real startup kit with certificates (mutual TLS on loopback);
  ``nvflare poc prepare`` deletes the workspace it prepares, so an existing workspace is replaced
  only with ``overwrite`` and only when it holds this module's state file (a POC workspace
  FedSegNet prepared); any other existing folder is refused (:mod:`fedsegnet.outputs`);
- admits FedSegNet's components in each participant's ``local/resources.json`` and, when asked,
  places a site privacy policy (``local/privacy.json``) *after* preparation: ``nvflare poc prepare``
  deletes and recreates the whole workspace, so a policy placed before it is lost;
- starts each participant with its own kit's ``startup/sub_start.sh --once`` in a new process group,
  with ``FEDSEGNET_DATA_ROOT`` pointing at that site's data, and records the pids in
  ``<workspace>/fedsegnet_poc.json``;
- submits, waits for and downloads jobs with FLARE's admin API (``new_secure_session``), as the
  project admin;
- stops only what it started: each participant's process group, by the recorded pid, after checking
  that the pid still runs that participant's kit.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from fedsegnet.errors import ConfigError, FedSegNetError, OutputError, RunError
from fedsegnet.flare.constants import DATA_ROOT_ENV, ROUND_RECORDS_FILE
from fedsegnet.flare.ops.policy import write_site_policy
from fedsegnet.report import shallowest_file

logger = logging.getLogger(__name__)

STATE_FILE = "fedsegnet_poc.json"
PROJECT_NAME = "fedsegnet"
ADMIN = "admin@consortium.org"
TERMINAL_STATES = ("FINISHED:COMPLETED", "FINISHED:ABORTED", "FINISHED:EXECUTION_EXCEPTION", "FINISHED:ABNORMAL")

_BUILDERS = [
    {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": ["master_template.yml"]}},
    {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
    {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poc_project(sites, fed_learn_port: int = 8002, admin_port: int = 8003, admin: str = ADMIN) -> dict:
    """A provisioning project (FLARE api_version 3) for a server ``localhost``, the given sites and one
    project admin; the same builders as ``poc/project.yml``.

    Args:
        sites: site names (letters, digits, ``-``, ``_``).
        fed_learn_port: the server's port for sites. Defaults to 8002.
        admin_port: the server's port for admin consoles. Defaults to 8003.
        admin: the project admin's user name (an email). Defaults to ``"admin@consortium.org"``.

    Raises:
        ConfigError: no site, a repeated site name, or equal ports.
    """
    sites = list(sites)
    if not sites:
        raise ConfigError("sites", sites, "at least one site is needed")
    if len(set(sites)) != len(sites):
        raise ConfigError("sites", sites, "site names repeat")
    if int(fed_learn_port) == int(admin_port):
        raise ConfigError("admin_port", admin_port, "must differ from fed_learn_port")
    participants = [
        {"name": "localhost", "type": "server", "org": "consortium",
         "fed_learn_port": int(fed_learn_port), "admin_port": int(admin_port)},
    ]  # fmt: skip
    participants += [{"name": s, "type": "client", "org": f"org_{i + 1}"} for i, s in enumerate(sites)]
    participants.append({"name": admin, "type": "admin", "org": "consortium", "role": "project_admin"})
    return {
        "api_version": 3,
        "name": PROJECT_NAME,
        "description": "FedSegNet POC",
        "participants": participants,
        "builders": _BUILDERS,
    }


def _pid_runs(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive and its command line mentions ``marker`` (so a recycled pid is never hit)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the recorded pid
    return marker in cmdline


class PocSystem:
    """A FLARE POC deployment on this machine: one server, N sites, one project admin.

    Args:
        workspace: POC workspace folder (:meth:`prepare` creates it; it replaces only a POC workspace
            FedSegNet prepared, and only when asked).
        sites: site names. Defaults to ``("site-1", "site-2")``.
        data_root: folder with one data folder per site (``<data_root>/<site>/dataset.json``), given to
            each site as ``FEDSEGNET_DATA_ROOT``. A dict ``{site: folder}`` gives each site its own root.
            Defaults to None (the sites inherit the caller's environment).
        fed_learn_port: the server's port for sites. Defaults to 8002.
        admin_port: the server's port for admin consoles. Defaults to 8003.
        site_env: extra environment variables per site, ``{site: {name: value}}``. Defaults to None.
        client_outcome_wait: seconds the server waits, after a job's server side ended, for every
            site to report how its side ended before it marks the job finished (FLARE's
            ``client_outcome_wait_timeout``, 900 by default; it only matters when a site is gone).
            None keeps FLARE's default. Defaults to 60.
    """

    def __init__(
        self,
        workspace: str | Path,
        sites=("site-1", "site-2"),
        data_root=None,
        fed_learn_port: int = 8002,
        admin_port: int = 8003,
        site_env: dict | None = None,
        client_outcome_wait: float | None = 60,
    ):
        self.workspace = Path(workspace).resolve()
        self.sites = list(sites)
        self.data_root = data_root
        self.fed_learn_port = int(fed_learn_port)
        self.admin_port = int(admin_port)
        self.site_env = dict(site_env or {})
        self.client_outcome_wait = client_outcome_wait
        self.admin = ADMIN
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        poc_project(self.sites, self.fed_learn_port, self.admin_port)  # validates

    # ------------------------------------------------------------------ layout
    @property
    def prod_dir(self) -> Path:
        return self.workspace / PROJECT_NAME / "prod_00"

    def kit(self, name: str) -> Path:
        """The startup kit (participant folder) of ``name``: ``"server"``, a site or the admin."""
        return self.prod_dir / ("localhost" if name == "server" else name)

    def server_run_dir(self, job_id: str) -> Path:
        """The server's folder of a job while it runs (and after a crash)."""
        return self.kit("server") / job_id

    def site_run_dir(self, site: str, job_id: str) -> Path:
        return self.kit(site) / job_id

    def log(self, name: str) -> Path:
        """FLARE's log of a participant's parent process."""
        return self.kit(name) / "log.txt"

    def _state(self) -> dict:
        root = self.data_root
        if isinstance(root, dict):
            root = {k: str(Path(v).resolve()) for k, v in root.items()}
        elif root is not None:
            root = str(Path(root).resolve())
        return {
            "sites": self.sites, "data_root": root, "fed_learn_port": self.fed_learn_port,
            "admin_port": self.admin_port, "site_env": self.site_env, "client_outcome_wait": self.client_outcome_wait,
            "pids": self.pids,
        }  # fmt: skip

    def _save_state(self):
        path = self.workspace / STATE_FILE
        path.write_text(json.dumps(self._state(), indent=2) + "\n")

    @classmethod
    def load(cls, workspace: str | Path) -> "PocSystem":
        """The POC system prepared in ``workspace`` (by this class or ``fedsegnet poc prepare``).

        Raises:
            FedSegNetError: the workspace was not prepared by FedSegNet; names the missing file.
        """
        path = Path(workspace).resolve() / STATE_FILE
        if not path.exists():
            raise FedSegNetError(f"{path} not found: prepare the workspace first (`fedsegnet poc prepare`)")
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FedSegNetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise FedSegNetError(f"{path}: cannot be read ({e})") from None
        try:
            system = cls(
                workspace, state["sites"], state.get("data_root"), state["fed_learn_port"], state["admin_port"],
                state.get("site_env"), state.get("client_outcome_wait", 60),
            )  # fmt: skip
            system.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problem = f"field {e.args[0]!r} missing" if isinstance(e, KeyError) else str(e)
            raise FedSegNetError(f"{path}: not a FedSegNet POC state file ({problem})") from None
        return system

    # ------------------------------------------------------------------ prepare
    def check_workspace(self, overwrite: bool = False) -> None:
        """Refuse a workspace that :meth:`prepare` may not replace.

        Args:
            overwrite: allow replacing a POC workspace FedSegNet prepared. Defaults to False.

        Raises:
            OutputError: the workspace exists and is not an empty folder, and ``overwrite`` is not
                given or it holds no ``fedsegnet_poc.json`` (it is not a POC workspace of FedSegNet's).
        """
        ws = self.workspace
        if not (ws.exists() or ws.is_symlink()):
            return
        if not ws.is_dir():
            raise OutputError(f"POC workspace {ws}: exists and is not a folder; it is left alone")
        if not any(ws.iterdir()):
            return
        if not overwrite:
            raise OutputError(
                f"POC workspace {ws}: exists; choose a new -w/--workspace, or give --overwrite to replace a POC workspace "
                "fedsegnet prepared"
            )
        if not (ws / STATE_FILE).is_file():
            raise OutputError(
                f"POC workspace {ws}: exists and is not a POC workspace fedsegnet prepared (no {STATE_FILE}); "
                "it is left alone, even with --overwrite"
            )

    def prepare(self, privacy_policy: str | Path | dict | None = None, overwrite: bool = False) -> "PocSystem":
        """Provision the POC workspace and write the site policies.

        Args:
            privacy_policy: a site privacy policy (``privacy.json`` path or its content) copied into
                every site's ``local/`` after preparation. Defaults to None.
            overwrite: replace an existing workspace when it is a POC workspace FedSegNet prepared
                (it holds ``fedsegnet_poc.json``). Defaults to False: an existing, non-empty
                workspace is refused.

        Raises:
            OutputError: the workspace is refused (see :meth:`check_workspace`); nothing was written.
            RunError: ``nvflare poc prepare`` failed (its output is in the message).
            FedSegNetError: processes of this workspace are still running.
        """
        self.check_workspace(overwrite)
        if any(self.running().values()):
            raise FedSegNetError(f"{self.workspace}: POC processes still running; stop them first (`fedsegnet poc stop`)")
        if (self.workspace / STATE_FILE).is_file():
            running = PocSystem.load(self.workspace).running()
            if any(running.values()):
                names = ", ".join(n for n, alive in running.items() if alive)
                raise FedSegNetError(f"{self.workspace}: POC processes still running ({names}); stop them first (`fedsegnet poc stop`)")
        import yaml

        self.workspace.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fedsegnet-poc-") as tmp:
            project_file = Path(tmp) / "project.yml"
            project_file.write_text(yaml.safe_dump(poc_project(self.sites, self.fed_learn_port, self.admin_port), sort_keys=False))
            env = dict(os.environ, NVFLARE_POC_WORKSPACE=str(self.workspace))
            cmd = [sys.executable, "-m", "nvflare.cli", "poc", "prepare", "-i", str(project_file), "--force"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not self.kit("server").is_dir():
            raise RunError(
                f"`nvflare poc prepare` failed (exit {done.returncode}) for {self.workspace}:\n{done.stdout}\n{done.stderr}"
            )
        for name in ["server", *self.sites]:
            write_site_policy(self.kit(name) / "local", create=False)
        if privacy_policy is not None:
            self.set_privacy_policy(privacy_policy)
        self.pids = {}
        self._save_state()
        return self

    def set_privacy_policy(self, policy: str | Path | dict, sites=None) -> list[Path]:
        """Write a privacy policy into ``<site kit>/local/privacy.json`` (read by the site when it starts).

        Args:
            policy: a ``privacy.json`` path or its parsed content.
            sites: the sites that get it. Defaults to None (every site).

        Returns:
            The written files.

        Raises:
            FedSegNetError: the policy file is missing or not JSON; names it.
        """
        if not isinstance(policy, dict):
            path = Path(policy)
            try:
                policy = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise FedSegNetError(f"privacy policy {path}: cannot read it as JSON: {e}") from None
        written = []
        for site in sites or self.sites:
            target = self.kit(site) / "local" / "privacy.json"
            target.write_text(json.dumps(policy, indent=2) + "\n")
            written.append(target)
        return written

    # ------------------------------------------------------------------ processes
    def _env(self, name: str) -> dict:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("PYTHONUNBUFFERED", "1")
        if name == "server" and self.client_outcome_wait is not None:
            env["NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT"] = str(float(self.client_outcome_wait))
        if name != "server":
            root = self.data_root.get(name) if isinstance(self.data_root, dict) else self.data_root
            if root is not None:
                env[DATA_ROOT_ENV] = str(Path(root).resolve())
            env.update({k: str(v) for k, v in self.site_env.get(name, {}).items()})
        return env

    def start_participant(self, name: str) -> int:
        """Start the server (``"server"``) or a site from its startup kit; returns its pid.

        Raises:
            FedSegNetError: the kit is missing, or this participant already runs.
        """
        if self._alive(name):
            raise FedSegNetError(f"{name} already runs (pid {self.pids[name]})")
        script = self.kit(name) / "startup" / "sub_start.sh"
        if not script.exists():
            raise FedSegNetError(f"{script} not found: prepare the POC workspace first")
        console = open(self.kit(name) / "console.log", "a")
        proc = subprocess.Popen(
            ["bash", str(script), "--once"], cwd=self.kit(name), env=self._env(name), stdout=console,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        console.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._save_state()
        logger.info("started %s (pid %d)", name, proc.pid)
        return proc.pid

    def _alive(self, name: str) -> bool:
        """Whether the participant ``name`` started by this system (or by the one that saved the
        state) still runs."""
        pid = self.pids.get(name)
        if pid is None:
            return False
        proc = self._procs.get(name)
        return proc.poll() is None if proc is not None else _pid_runs(pid, str(self.kit(name)))

    def running(self) -> dict[str, bool]:
        """``{participant: alive}`` for every participant this system started."""
        return {name: self._alive(name) for name in self.pids}

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0):
        """Send ``sig`` to the process group of participant ``name`` (started by this system) and wait
        until its first process ended. SIGKILL simulates a crash or a power cut."""
        if not self._alive(name):
            return
        pid = self.pids[name]
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while self._alive(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:  # the leader ended or the grace passed: end what is left of its group (its job processes)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc = self._procs.get(name)
        if proc is not None:
            proc.wait(timeout=10)

    def stop(self, grace: float = 15.0):
        """Stop every participant this system started: SIGTERM to its process group, SIGKILL after ``grace``."""
        for name in sorted(self.pids, key=lambda n: n == "server"):  # sites first, then the server
            self.kill(name, signal.SIGTERM, timeout=grace)
        self.pids = {}
        self._procs = {}
        if (self.workspace / STATE_FILE).exists():
            self._save_state()

    def start(self, timeout: float = 180.0) -> "PocSystem":
        """Start the server, then every site, and wait until all sites are connected.

        Raises:
            FedSegNetError: not ready within ``timeout``; the message ends with the last lines of the
                logs of the participants that are not up.
        """
        self.start_participant("server")
        for site in self.sites:
            self.start_participant(site)
        self.wait_ready(self.sites, timeout=timeout)
        return self

    def connected_sites(self, session=None) -> list[str]:
        if session is None:
            with self.session() as s:
                return self.connected_sites(s)
        return sorted(c.name for c in session.get_connected_client_list())

    def wait_ready(self, sites, timeout: float = 180.0):
        """Wait until the admin API answers and every site in ``sites`` is connected."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for name, alive in self.running().items():
                if not alive:
                    raise RunError(f"{name} exited while starting; see {self.kit(name) / 'console.log'}:\n{self._tail(name)}")
            try:
                with self.session(timeout=10) as s:
                    connected = self.connected_sites(s)
                if set(sites) <= set(connected):
                    return
                last = f"connected sites: {connected}"
            except Exception as e:  # the server is still starting
                last = f"admin API: {e}"
            time.sleep(2)
        raise RunError(f"POC system not ready within {timeout:.0f} s ({last}); server log:\n{self._tail('server')}")

    def _tail(self, name: str, lines: int = 20) -> str:
        for path in (self.log(name), self.kit(name) / "console.log"):
            if path.exists():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # ------------------------------------------------------------------ admin API
    @contextmanager
    def session(self, timeout: float = 30.0):
        """A secure admin API session as the project admin (FLARE's ``new_secure_session``)."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        with redirect_stdout(io.StringIO()):  # FLARE prints "Connecting to FLARE ..." per session
            s = new_secure_session(self.admin, str(self.kit(self.admin)), timeout=timeout)
        try:
            yield s
        finally:
            s.close()

    def submit(self, job_dir: str | Path) -> str:
        """Submit a job folder; returns the job id."""
        with self.session() as s:
            job_id = s.submit_job(str(Path(job_dir).resolve()))
        logger.info("submitted %s as job %s", job_dir, job_id)
        return job_id

    def wait(self, job_id: str, timeout: float = 1800.0, on_round=None, poll: float = 2.0) -> str:
        """Wait until job ``job_id`` ends; returns its final status (e.g. ``"FINISHED:COMPLETED"``).

        Args:
            job_id: the job.
            timeout: seconds. Defaults to 1800.
            on_round: called with every new per-round record the server writes. Defaults to None.
            poll: seconds between status polls. Defaults to 2.

        Raises:
            FedSegNetError: the job did not end within ``timeout`` (it is left running; the caller decides).
        """
        deadline = time.monotonic() + timeout
        offset = 0  # bytes of the records file already reported (complete lines only)
        records = self.server_run_dir(job_id) / ROUND_RECORDS_FILE
        with self.session() as s:
            while True:
                status = s.get_job_status(job_id)
                if on_round is not None and records.exists():
                    with open(records, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    end = chunk.rfind(b"\n") + 1
                    for line in chunk[:end].decode("utf-8").splitlines():
                        if line.strip():
                            on_round(json.loads(line))
                    offset += end
                if status and status.startswith("FINISHED"):
                    return status
                if time.monotonic() > deadline:
                    raise RunError(f"job {job_id} not finished within {timeout:.0f} s (status {status})")
                time.sleep(poll)

    def download(self, job_id: str, destination: str | Path) -> Path:
        """Download a finished job's result (server workspace) through the admin API; returns its folder.

        Raises:
            OutputError: ``<destination>/<job_id>`` exists already (it is left alone).
            RunError: the admin API returned no result folder.
        """
        if (Path(destination) / job_id).exists():
            raise OutputError(f"--download {destination}: {Path(destination) / job_id} exists; it is left alone")
        with self.session() as s:
            location = s.download_job_result(job_id, str(Path(destination).resolve()))
        if not location or not Path(location).exists():
            raise RunError(f"job {job_id}: download returned no result folder ({location!r})")
        return Path(location)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def find_in_result(result_dir: str | Path, name: str) -> Path | None:
    """The shallowest file called ``name`` under a downloaded job result (its layout varies by FLARE
    version; a resumed job also holds the files it took over, one folder deeper)."""
    return shallowest_file(result_dir, name)
