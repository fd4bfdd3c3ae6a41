"""Site component policy: let a FLARE site build FedSegNet's components.

FLARE 2.9 builds only allow-listed classes for jobs that bring no code of their own
(``class_allow_list`` in the site's ``local/resources.json``; FLARE's built-in default list when
absent). Jobs in ``jobs/`` reference the installed ``fedsegnet`` package, so each site (and the
simulator's workspace) must admit the FedSegNet adapters and FLARE's ``LearnerExecutor``. This
module adds exactly those entries to a site's resources file and keeps everything else in it.

It writes only into a FLARE kit's ``local/`` folder (:func:`kit_local_problem`): a provisioned or POC
startup kit's (beside ``startup/``, holding ``resources.json.default``) or a simulator workspace's
(``<workspace>/local``, beside the ``startup/`` the simulator makes). A simulator workspace that has
not run yet has no ``local/``: ``create=True`` (the default, what the simulator runner passes) makes
it; ``create=False`` (the ``fedsegnet job policy`` command, the POC kits) refuses any other folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

from fedsegnet.errors import OutputError

FEDSEGNET_ALLOW_LIST = (
    "fedsegnet.flare.",
    "nvflare.app_common.executors.learner_executor.LearnerExecutor",
)


KIT_LOCAL_FILES = ("resources.json.default", "resources.json")
"""Files a FLARE kit's ``local/`` folder holds (provisioning writes the first)."""


def kit_local_problem(local_dir: str | Path) -> str | None:
    """What keeps ``local_dir`` from being a FLARE kit's ``local/`` folder, or None when it is one.

    A kit's local folder is an existing folder named ``local`` that sits beside ``startup/`` (a
    startup kit, or a simulator workspace after a run) or holds ``resources.json.default`` /
    ``resources.json``.

    Args:
        local_dir: the folder to check.

    Returns:
        One line naming the folder and what a kit's local folder looks like, or None.
    """
    local_dir = Path(local_dir)
    looks = (
        "a FLARE kit's local folder is an existing folder named 'local' that sits beside the kit's 'startup/' "
        "(a startup kit; a simulator workspace after a run) or holds resources.json.default or resources.json"
    )
    if not local_dir.is_dir():
        what = "is not a folder" if local_dir.exists() else "does not exist"
        return (
            f"{local_dir}: {what}; {looks} (for a simulator workspace before its first run, "
            "`fedsegnet job policy --create <workspace>/local` creates it)"
        )
    if local_dir.name != "local":
        return f"{local_dir}: not named 'local'; {looks}"
    if not (local_dir.parent / "startup").is_dir() and not any((local_dir / f).is_file() for f in KIT_LOCAL_FILES):
        return f"{local_dir}: no 'startup/' beside it and no {' or '.join(KIT_LOCAL_FILES)} in it; {looks}"
    return None


def write_site_policy(local_dir: str | Path, create: bool = True) -> Path:
    """Add FedSegNet's classes to ``<local_dir>/resources.json`` (created from ``resources.json.default``
    or empty when missing); entries already there are kept.

    Args:
        local_dir: a FLARE kit's ``local`` folder (for the simulator: ``<workspace>/local``); see
            :func:`kit_local_problem`.
        create: also accept a folder named ``local`` that is not (yet) a kit's, creating it when
            missing: a simulator workspace before its first run. False accepts only a kit's local
            folder (what ``fedsegnet job policy`` does without ``--create``). Defaults to True.

    Returns:
        The path of the written ``resources.json``.

    Raises:
        OutputError: ``local_dir`` is not a kit's local folder (``create=False``), or is not named
            ``local`` (``create=True``); names the folder and what a kit's local folder looks like.
        ValueError: the existing resources file is not a JSON object; names the file.
    """
    local_dir = Path(local_dir)
    if create:
        if local_dir.name != "local":
            raise OutputError(f"{local_dir}: not named 'local'; the site policy goes into a kit's or a simulator workspace's local/ folder")
        if local_dir.exists() and not local_dir.is_dir():
            raise OutputError(f"{local_dir}: exists and is not a folder")
        local_dir.mkdir(parents=True, exist_ok=True)
    else:
        problem = kit_local_problem(local_dir)
        if problem:
            raise OutputError(problem)
    target = local_dir / "resources.json"
    source = target if target.exists() else local_dir / "resources.json.default"
    resources = {"format_version": 2}
    if source.exists():
        try:
            resources = json.loads(source.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(resources, dict):
            raise ValueError(f"{source}: must hold a JSON object, got {type(resources).__name__}")
    allow = list(resources.get("class_allow_list", DEFAULT_CLASS_ALLOW_LIST))
    for entry in FEDSEGNET_ALLOW_LIST:
        if entry not in allow and "*" not in allow:
            allow.append(entry)
    resources["class_allow_list"] = allow
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(resources, indent=2))
    tmp.replace(target)
    return target
