"""Site component policy: let a FLARE site build FedSegNet's components.

FLARE 2.9 builds only allow-listed classes for jobs that bring no code of their own
(``class_allow_list`` in the site's ``local/resources.json``; FLARE's built-in default list when
absent). Jobs in ``jobs/`` reference the installed ``fedsegnet`` package, so each site (and the
simulator's workspace) must admit the FedSegNet adapters and FLARE's ``LearnerExecutor``. This
module adds exactly those entries to a site's resources file and keeps everything else in it.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

FEDSEGNET_ALLOW_LIST = (
    "fedsegnet.flare.",
    "nvflare.app_common.executors.learner_executor.LearnerExecutor",
)


def write_site_policy(local_dir: str | Path) -> Path:
    """Add FedSegNet's classes to ``<local_dir>/resources.json`` (created from ``resources.json.default``
    or empty when missing); entries already there are kept.

    Args:
        local_dir: a site's ``local`` folder (for the simulator: ``<workspace>/local``).

    Returns:
        The path of the written ``resources.json``.

    Raises:
        ValueError: the existing resources file is not a JSON object; names the file.
    """
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
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
