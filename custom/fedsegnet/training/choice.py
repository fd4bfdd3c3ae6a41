"""No harm at a site: of the models a site can end a job with, keep the one that scores best on its
own validation split.

The candidates (:data:`CANDIDATES`, in order of preference when scores tie):

- ``global``: the server's model (with the site's personal keys laid over it, when it has any);
- ``personal``: the site's personalised model (``ditto``'s personal model, ``finetune``'s
  fine-tuned global model), when the job personalises;
- ``local``: the site's own model after its last training round (the previous global model trained
  on the site's data for one more round).

:func:`choose` picks one from their validation Dice; :func:`save_choice` writes the chosen weights
as a model file that ``fedsegnet eval`` and ``fedsegnet infer --model`` read like the server's
(``{"model": weights, "train_conf": {"fedsegnet": spec}}``), and a JSON record of every
candidate's score. Nothing here knows FLARE; the Learner calls it when it validates the server's
final and best models.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from fedsegnet.errors import ConfigError

__all__ = ["CANDIDATES", "CHOICE_FILE", "OWNERS", "choose", "save_choice", "read_choice", "chosen_model"]

CANDIDATES = ("global", "personal", "local")
"""The models a site may keep, in order of preference on a tie."""

CHOICE_FILE = "choice.json"
"""The record of a site's choices in its choice folder."""

OWNERS = {"final": "SRV_FL_global_model.pt", "best": "SRV_best_FL_global_model.pt"}
"""The server models a site's choices are made from, by the name users give them."""


def choose(scores: Mapping[str, float | None]) -> str:
    """The candidate with the highest validation Dice (ties and missing scores: the earlier in :data:`CANDIDATES`).

    Args:
        scores: ``{candidate: Dice or None}`` (None: not scored, e.g. no voxel-labelled validation case).

    Returns:
        The chosen name; ``"global"`` when no candidate has a score.

    Raises:
        ConfigError: (field ``candidate``) for a name not in :data:`CANDIDATES`.
    """
    unknown = sorted(set(scores) - set(CANDIDATES))
    if unknown:
        raise ConfigError("candidate", unknown[0], "unknown model candidate", options=CANDIDATES)
    best, best_score = "global", -math.inf
    for name in CANDIDATES:
        score = scores.get(name)
        if score is not None and math.isfinite(score) and score > best_score:
            best, best_score = name, score
    return best


def _stem(owner: str) -> str:
    """A file-name-safe form of a model owner (``SRV_FL_global_model.pt`` -> ``SRV_FL_global_model``)."""
    stem = owner[:-3] if owner.endswith(".pt") else owner
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"


def save_choice(folder: str | Path, site: str, owner: str, scores: Mapping[str, float | None], chosen: str,
                weights: Mapping, spec: Mapping | None) -> Path:  # fmt: skip
    """Write the chosen model of ``owner``'s round as ``<folder>/<site>_<owner>.pt`` and record it in
    ``<folder>/choice.json`` (other owners' records are kept).

    Args:
        folder: the site's choice folder (created).
        site: the site's name.
        owner: the server model the candidates were made from (``SRV_FL_global_model.pt``, ...).
        scores: every candidate's validation Dice.
        chosen: the chosen candidate (:func:`choose`).
        weights: its weights ``{name: array or tensor}``.
        spec: the model spec (``train_conf["fedsegnet"]``), so the file loads alone. Defaults to None.

    Returns:
        The model file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / f"{site}_{_stem(owner)}.pt"
    state = {k: torch.as_tensor(v).detach().cpu().clone() for k, v in weights.items()}
    tmp = model_file.with_name(model_file.name + ".tmp")
    torch.save({"model": state, "train_conf": {"fedsegnet": dict(spec)} if spec else {}}, tmp)
    os.replace(tmp, model_file)
    record_path = folder / CHOICE_FILE
    record = read_choice(folder) if record_path.exists() else {"site": site, "models": {}}
    record["models"][owner] = {
        "chosen": chosen, "val_dice": {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in scores.items()},
        "file": model_file.name,
    }  # fmt: skip
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, record_path)
    return model_file


def read_choice(folder: str | Path) -> dict:
    """The record :func:`save_choice` keeps in ``folder``.

    Raises:
        ConfigError: (field ``choice``) naming the file when it is missing or not a choice record.
    """
    path = Path(folder) / CHOICE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError("choice", str(path), f"cannot be read ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("models"), dict):
        raise ConfigError("choice", str(path), "not a site's model-choice record (no 'models')")
    return record


def chosen_model(site_dir: str | Path, of: str = "final") -> tuple[Path, dict]:
    """The model file a site chose, from its job folder or its choice folder.

    Args:
        site_dir: the site's job folder (``<site workspace>/<job id>``, holding ``fedsegnet_choice/``)
            or the choice folder itself.
        of: which server model the choice was made from: ``"final"`` or ``"best"`` (:data:`OWNERS`),
            or an owner name as recorded. Defaults to ``"final"``.

    Returns:
        ``(model file, {"site", "owner", "chosen", "val_dice"})``.

    Raises:
        ConfigError: (field ``choice``) naming the folder when it holds no choice record, the
            record has no choice for ``of`` (listing those it has), or the model file is missing.
    """
    folder = Path(site_dir)
    if not (folder / CHOICE_FILE).is_file() and (folder / "fedsegnet_choice" / CHOICE_FILE).is_file():
        folder = folder / "fedsegnet_choice"
    record = read_choice(folder)
    owner = OWNERS.get(of, of)
    entry = record["models"].get(owner)
    if not isinstance(entry, dict):
        have = ", ".join(sorted(record["models"])) or "none"
        raise ConfigError("choice", str(folder / CHOICE_FILE), f"no choice made from {owner} (it has: {have})")
    model = folder / str(entry.get("file", ""))
    if not model.is_file() or model.parent != folder:
        raise ConfigError("choice", str(model), "the chosen model file is missing")
    return model, {"site": record.get("site"), "owner": owner, "chosen": entry.get("chosen"), "val_dice": entry.get("val_dice", {})}
