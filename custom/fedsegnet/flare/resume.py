"""Resume a federation in a new job from what an interrupted or failed job left on disk.

FLARE 2.9 does not restore a running job after the server restarts, and it fails a whole job when
one site's job process dies; so FedSegNet persists, every round, everything a continuation needs:

- server: the global model with, in its ``train_conf``, the number of completed rounds
  (:data:`ROUND_KEY`) and the AAM state (``fedsegnet_aam``), in
  ``<server workspace>/<job id>/app_server/FL_global_model.pt`` (written atomically by FLARE's
  persistor), the per-round records ``<job id>/fedsegnet_rounds.jsonl`` and the ledger
  ``<job id>/fedsegnet_ledger/``;
- site: the error-feedback residual of its last two rounds, tagged with the round
  (``<site workspace>/<job id>/fedsegnet_uplink_residual.pt`` and ``....prev.pt``).

A new job with the job arg ``resume_from=<old job id>`` (``fedsegnet job resume``) starts from them:
the server loads that global model and AAM state, copies the records of the completed rounds and
continues with the next round up to ``num_rounds`` (the total of the federation); each site takes
the residual that belongs to the last completed round (a site that had already sent an update the
server never aggregated takes the previous one, so nothing is counted twice). The server finds the
earlier job's files in its run folder (server killed) or in FLARE's job store (a job that ended,
e.g. failed; see :func:`find_resume_point`).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fedsegnet.config import JOB_ID_PATTERN, NOT_A_JOB_ID
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.flare.constants import ROUND_RECORDS_FILE
from fedsegnet.ledger import LEDGER_FOLDER as LEDGER_DIR  # taken out of an archived job too: the ledger continues it

ROUND_KEY = "fedsegnet_round"
"""Key in the saved global model's ``train_conf``: ``{"completed": rounds done, "job_id": id}``."""

_JOB_ID = JOB_ID_PATTERN


def check_job_id(value: str, field: str = "resume_from") -> str:
    """``value`` if it can be a FLARE job id (no path separators); raises ConfigError naming ``field``."""
    if not isinstance(value, str) or not _JOB_ID.match(value) or value in (".", ".."):
        raise ConfigError(field, value, NOT_A_JOB_ID)
    return value


@dataclass
class ResumePoint:
    """What an earlier job of this server left: its run folder (or the folder its archive was
    extracted into), global model and per-round records."""

    job_id: str
    run_dir: Path
    model: Path
    records: Path


def job_store_root(server_root: str | Path) -> Path | None:
    """Where the server's FLARE job store keeps finished jobs (``NVFL_JOB_STORE_ROOT``, else the
    ``job_manager``'s ``uri_root`` in ``<server_root>/local/resources.json``); None when unknown."""
    env = os.environ.get("NVFL_JOB_STORE_ROOT")
    if env:
        return Path(env)
    local = Path(server_root) / "local"
    for name in ("resources.json", "resources.json.default"):
        try:
            resources = json.loads((local / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for component in resources.get("components", []):
            if isinstance(component, dict) and component.get("id") == "job_manager":
                root = Path((component.get("args") or {}).get("uri_root", "jobs"))
                return root if root.is_absolute() else Path(server_root) / root
    return None


def find_resume_point(
    server_root: str | Path, job_id: str, model_file: str = "FL_global_model.pt", extract_to: str | Path | None = None
) -> ResumePoint:
    """Locate the global model an earlier job of this server saved.

    An interrupted job (server killed) still has its run folder ``<server_root>/<job id>``; a job that
    ended (completed, or failed when a site's job process died) has been archived by FLARE into its
    job store (``<store>/<job id>/workspace``, a zip), from which the model and the records are
    extracted into ``extract_to``.

    Args:
        server_root: the server's workspace root (where FLARE keeps ``<job id>/`` run folders).
        job_id: the earlier job.
        model_file: file name of the global model. Defaults to FLARE's ``"FL_global_model.pt"``.
        extract_to: folder for what is taken out of a job-store archive. Defaults to None (run
            folders only).

    Returns:
        The resume point (the completed rounds are in the model's ``train_conf``).

    Raises:
        FedSegNetError: no model in either place; the message names the paths looked at.
    """
    check_job_id(job_id)
    run_dir = Path(server_root) / job_id
    model = run_dir / "app_server" / model_file
    if model.is_file():
        return ResumePoint(job_id=job_id, run_dir=run_dir, model=model, records=run_dir / ROUND_RECORDS_FILE)
    store = job_store_root(server_root)
    archive = store / job_id / "workspace" if store is not None else None
    if archive is not None and archive.is_file() and extract_to is not None:
        wanted = {f"app_server/{model_file}", ROUND_RECORDS_FILE}
        try:
            with zipfile.ZipFile(archive) as z:
                names = set(z.namelist())
                present = (wanted & names) | {n for n in names if n.startswith(f"{LEDGER_DIR}/") and not n.endswith("/")}
                if f"app_server/{model_file}" in present:
                    for name in sorted(present):
                        z.extract(name, extract_to)
                    out = Path(extract_to)
                    return ResumePoint(
                        job_id=job_id, run_dir=out, model=out / "app_server" / model_file, records=out / ROUND_RECORDS_FILE
                    )
        except (OSError, zipfile.BadZipFile) as e:
            raise FedSegNetError(f"resume_from={job_id!r}: cannot read the archived workspace {archive}: {e}") from None
    found = sorted(p.name for p in Path(server_root).iterdir() if p.is_dir()) if Path(server_root).is_dir() else []
    where = f"{model}" + (f" or {archive}" if archive is not None else "")
    raise FedSegNetError(
        f"resume_from={job_id!r}: no global model at {where} "
        + ("(the job never finished a round" if run_dir.is_dir() or (archive is not None and archive.is_file())
           else "(no run folder or archive of that job on this server")
        + f"; run folders here: {', '.join(found) or 'none'})"
    )  # fmt: skip


def copy_records(src: Path, dst: Path, completed: int) -> int:
    """Copy the records of rounds ``< completed`` from ``src`` to ``dst`` (appended); returns how many.

    Unreadable lines (a record torn by the crash) are skipped.
    """
    if not Path(src).is_file():
        return 0
    kept = []
    for line in Path(src).read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("round"), int) and rec["round"] < completed:
            kept.append(json.dumps(rec))
    if kept:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "a", encoding="utf-8") as f:
            f.write("\n".join(kept) + "\n")
    return len(kept)


def pick_residual(candidates: list[tuple[Path, int | None]], next_round: int) -> tuple[Path | None, str]:
    """Choose the saved residual a resumed site continues from.

    Args:
        candidates: ``(file, round it was saved after)`` of the residual files found (round None when
            the file carries none).
        next_round: the round the site is about to send an update for.

    Returns:
        ``(file or None, explanation)``: the file saved after round ``next_round - 1``; None when there
        is none (then the site starts from a zero residual).
    """
    for path, rnd in candidates:
        if rnd is not None and rnd == next_round - 1:
            return path, f"residual of round {rnd} from {path}"
    seen = ", ".join(f"{p.name}: round {r}" for p, r in candidates) or "none"
    return None, f"no residual saved after round {next_round - 1} (found {seen}); starting from zero"
