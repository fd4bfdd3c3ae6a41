"""`fedsegnet report`: figures and one HTML page from what a simulator or POC run left on disk.

Reads the server's per-round records (``fedsegnet_rounds.jsonl``), the cross-site evaluation
(``cross_site_val/cross_val_results.json``), the global model (``app_server/FL_global_model.pt``) and
the job args FLARE deployed (``app_server/config/config_fed_server.json`` and a site's
``config_fed_client.json``) found under a run folder: a simulator workspace, a POC or production job
result downloaded through the admin API, or a server job folder. The page says what ran (preset,
network, aggregation, compression, personalisation, DP), names models as ``global (final)``,
``global (best)`` and ``site-1 local`` (``report.json`` keeps FLARE's names beside them) and numbers
rounds from 0, as FLARE's records, logs, TensorBoard and the ledger do. With a held-out test folder
(``--data``) it also evaluates the final global model per class and per case (Dice, HD95 in mm) and
draws slices of a test case with the label filled and the prediction outlined. When the job kept a
ledger (``fedsegnet_ledger/``), the page has a ledger section: it is verified (its stored
certificates; ``fedsegnet ledger verify --kits`` checks them against the project's kits), with the
last signed head and, per entry, who signed and who witnessed it. Every plotted series is also
written to ``report.json``, read from the run, so the figures can be checked against the records.
matplotlib (Agg backend); no network access.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path

import numpy as np

from fedsegnet.errors import FedSegNetError

logger = logging.getLogger(__name__)

RECORDS = "fedsegnet_rounds.jsonl"  # = fedsegnet.flare.constants.ROUND_RECORDS_FILE (core code does not import flare/)
CROSS_SITE = "cross_val_results.json"
MODEL = "FL_global_model.pt"
MISSED_ROUNDS_NAMED = 2
"""A site that missed more than this many rounds is named in the report and the demo's output."""


def shallowest_file(root: str | Path, name: str) -> Path | None:
    """The file called ``name`` nearest to ``root`` (ties by path), or None."""
    hits = sorted(Path(root).rglob(name), key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def find_run(root: str | Path) -> dict[str, Path | None]:
    """Paths of the records, cross-site results and global model under ``root``.

    Raises:
        FedSegNetError: no per-round records under ``root`` (names the folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FedSegNetError(f"{root}: not a folder")
    records = shallowest_file(root, RECORDS)
    if records is None:
        raise FedSegNetError(f"{root}: no {RECORDS} below it (give a simulator workspace or a downloaded job result)")
    job = records.parent
    return {
        "records": records,
        "cross_site": shallowest_file(job, CROSS_SITE),
        "model": shallowest_file(job, MODEL),
    }


def read_records(path: str | Path) -> list[dict]:
    """The per-round records of a ``fedsegnet_rounds.jsonl``, by round; a torn line is skipped (logged);
    a missing file gives []."""
    if not Path(path).exists():
        return []
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s line %d: not JSON (a torn record?), skipped", path, i + 1)
    return sorted(out, key=lambda r: r.get("round", 0))


def series(records: list[dict]) -> dict:
    """The per-round series the figures show, read from the records (None where a round lacks it)."""
    rounds = [r["round"] for r in records]
    sites = sorted({s for r in records for s in r.get("sites", {})})

    def per_site(key, sub=None):
        out = {}
        for s in sites:
            values = []
            for r in records:
                entry = r.get("sites", {}).get(s, {})
                v = (entry.get(sub) or {}).get(key) if sub else entry.get(key)
                values.append(v if isinstance(v, (int, float)) and math.isfinite(v) else None)
            out[s] = values
        return out

    return {
        "rounds": rounds,
        "sites": sites,
        "val_dice_global": [r.get("val_dice_global") for r in records],
        "val_dice_local": [r.get("val_dice_local") for r in records],
        "site_val_dice_global": per_site("val_dice_global"),
        "site_val_dice_local": per_site("val_dice_local"),
        "train_loss": per_site("train_loss"),
        "bytes_up": per_site("bytes_up"),
        "bytes_down": per_site("bytes_down"),
        "aam_weight": per_site("weight", sub="aggregation"),
        "dp_epsilon": per_site("epsilon", sub="dp"),
        "dp_budget": _budget(records),
        "rss_mb": per_site("rss_mb"),
        "server_rss_mb": [r.get("server_rss_mb") for r in records],
        "errors": [dict(e, round=r["round"]) for r in records for e in r.get("errors", [])],
        "missing_sites": {r["round"]: missing_sites(r) for r in records if r.get("missing_sites")},
        "missed_rounds": missed_rounds(records),
        "secure_rounds": [dict(r["secure_aggregation"], round=r["round"]) for r in records if r.get("secure_aggregation")],
    }


def _budget(records: list[dict]) -> float | None:
    """The privacy budget the sites reported (the smallest; None when none has one)."""
    budgets = [e["dp"]["budget"] for r in records for e in r.get("sites", {}).values()
               if isinstance(e.get("dp"), dict) and e["dp"].get("budget")]  # fmt: skip
    return min(budgets) if budgets else None


def missing_sites(record: dict) -> dict[str, dict]:
    """``{site: {"reason", "detail"}}`` of the sites a round record says did not contribute.

    Records written before the reasons were kept list the names only; their reason is None.
    """
    missing = record.get("missing_sites") or {}
    if isinstance(missing, dict):
        return missing
    return {site: {"reason": None, "detail": "no update"} for site in missing}


def missed_rounds(records: list[dict], more_than: int = MISSED_ROUNDS_NAMED) -> dict[str, dict]:
    """The sites that did not contribute to more than ``more_than`` of the recorded rounds.

    Args:
        records: round records (:func:`read_records`).
        more_than: name a site that missed more rounds than this. Defaults to :data:`MISSED_ROUNDS_NAMED`.

    Returns:
        ``{site: {"missed": n, "rounds": number of records, "reasons": {reason: n}, "text": one line}}``,
        by site name; the line reads e.g. ``site-3 missed 4 of 5 rounds (late 4)``.
    """
    counts: dict[str, dict] = {}
    for record in records:
        for site, why in missing_sites(record).items():
            entry = counts.setdefault(site, {"missed": 0, "reasons": {}})
            entry["missed"] += 1
            reason = why.get("reason") or "no update"
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
    out = {}
    for site, entry in sorted(counts.items()):
        if entry["missed"] > more_than:
            reasons = ", ".join(f"{k} {n}" for k, n in sorted(entry["reasons"].items()))
            text = f"{site} missed {entry['missed']} of {len(records)} rounds ({reasons})"
            out[site] = {**entry, "rounds": len(records), "text": text}
    return out


def _has(values) -> bool:
    if isinstance(values, dict):
        return any(_has(v) for v in values.values())
    return any(v is not None for v in values)


def _nan(values):
    return [float("nan") if v is None else float(v) for v in values]


FINAL_MODEL = f"SRV_{MODEL}"
"""FLARE's cross-site name of the server's final global model."""
BEST_MODEL = f"SRV_best_{MODEL}"
"""FLARE's cross-site name of the global model its model selector kept (best validation Dice)."""
ROUND_NUMBERING = (
    "Rounds are numbered from 0, as FLARE's logs, the round records, TensorBoard and the ledger number "
    "them; the console's \"round 0 (1 of N)\" is the same round."
)


def display_name(model: str) -> str:
    """The report's name of a model of the cross-site evaluation.

    Args:
        model: FLARE's name: ``SRV_FL_global_model.pt``, ``SRV_best_FL_global_model.pt`` or a site's name.

    Returns:
        ``"global (final)"``, ``"global (best)"``, ``"global (<file>)"`` for another server model, or
        ``"<site> local"`` (the site's last local model).
    """
    if model == FINAL_MODEL:
        return "global (final)"
    if model == BEST_MODEL:
        return "global (best)"
    if model.startswith("SRV_"):
        return f"global ({model[4:].removesuffix('.pt')})"
    return f"{model} local"


def _model_order(models) -> list[str]:
    """The server's final and best models first, other server models, then the sites' by name."""
    rank = {FINAL_MODEL: 0, BEST_MODEL: 1}
    return sorted(models, key=lambda m: (rank.get(m, 2 if m.startswith("SRV_") else 3), m))


def model_facts(path: str | Path | None) -> dict | None:
    """What the global model file says about the model: its spec's network, patch, classes and channels,
    and the number and float32 size of its weights (the uncompressed size of one model on the wire).

    Args:
        path: FLARE's saved global model (``{"model": state_dict, "train_conf": {"fedsegnet": spec}}``).

    Returns:
        ``{"network", "network_kwargs", "preset", "patch_size", "num_classes", "in_channels", "n_values",
        "float32_bytes"}`` (spec fields None when the file has no spec); None when there is no file or it
        cannot be read (logged).
    """
    if path is None or not Path(path).is_file():
        return None
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file; the report goes on without it
        logger.warning("%s: not readable as a model file (%s): the report leaves out the model's facts", path, type(e).__name__)
        return None
    state = data.get("model", data) if isinstance(data, dict) else {}
    conf = data.get("train_conf") if isinstance(data, dict) else None
    spec = (conf.get("fedsegnet") if isinstance(conf, dict) else None) or {}
    n_values = sum(int(v.numel()) for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    facts = {k: spec.get(k) for k in ("network", "network_kwargs", "preset", "patch_size", "num_classes", "in_channels")}
    return {**facts, "n_values": n_values, "float32_bytes": 4 * n_values}


JOB_GROUPS = (
    ("federation", ("num_rounds", "min_clients", "train_timeout", "drop_stragglers", "wait_after_min_clients",
                    "ignore_result_error", "resume_from", "seed")),
    ("model", ("preset", "network", "patch_size", "num_classes", "in_channels")),
    ("local training", ("local_steps", "val_max_cases", "fedprox_mu", "pseudo_threshold", "pseudo_ramp_rounds",
                        "torch_threads", "num_workers")),
    ("aggregation", ("aggregation", "aam_temperature", "aam_floor", "aam_cap", "aam_peer_cases_ratio", "secure_aggregation",
                     "secagg_threshold")),
    ("compression", ("up_ratio", "up_bits", "down_ratio", "down_bits", "down_first_bits", "compression_block",
                     "compression_scope", "dense_bits")),
    ("personalisation", ("personalization", "personal_keys", "ditto_lambda", "personal_steps", "boundary_weight",
                         "boundary_band", "boundary_perturbation")),
    ("differential privacy", ("dp", "dp_noise", "dp_target_epsilon", "dp_delta", "dp_clip", "dp_budget")),
)  # fmt: skip
"""The job args the page's "What ran" table shows, by group (the others are in the full list)."""

_AGGREGATORS = {
    "InTimeAccumulateWeightedAggregator": "FedAvg (FLARE's InTimeAccumulateWeightedAggregator)",
    "SharedKeysWeightedAggregator": "FedAvg (FLARE's InTimeAccumulateWeightedAggregator, shared keys only)",
}


def _job_args_of(config: dict) -> dict:
    """The job args of one app config: its top-level plain values (``format_version`` and the component
    lists left out)."""
    def plain(v):
        return v is None or isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and all(plain(x) for x in v))

    return {k: v for k, v in config.items() if k != "format_version" and plain(v)}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning("%s: not readable as JSON (%s): the report leaves it out", path, type(e).__name__)
        return None
    return data if isinstance(data, dict) else None


def read_job_config(job_dir: str | Path, root: str | Path | None = None) -> dict | None:
    """The job args a run ran with, from the configs FLARE deployed into the run folder.

    The server's are ``<job_dir>/app_server/config/config_fed_server.json``; the sites' are the client
    config deployed with it (``app_server/config/config_fed_client.json``, where the job deploys one app
    to all) or else the shallowest ``app_<site>/config/config_fed_client.json`` under ``root``.

    Args:
        job_dir: the server's job folder (the one holding ``fedsegnet_rounds.jsonl``).
        root: the run folder to look in for a site's app. Defaults to None (``job_dir``).

    Returns:
        ``{"server_config", "site_config": path or None, "args": {name: value}, "source": {name: "server" |
        "site" | "both"}, "differ": [names whose server and site values differ], "aggregator": the
        aggregator component's class name or None}``; None when the server's config is not there.
    """
    job_dir = Path(job_dir)
    server_file = job_dir / "app_server" / "config" / "config_fed_server.json"
    server = _read_json(server_file) if server_file.is_file() else None
    if server is None:
        return None
    site_file = job_dir / "app_server" / "config" / "config_fed_client.json"
    if not site_file.is_file():
        hits = [p for p in Path(root or job_dir).rglob("config_fed_client.json")
                if p.parent.name == "config" and p.parent.parent.name.startswith("app_")]  # fmt: skip
        site_file = min(hits, key=lambda p: (len(p.parts), str(p))) if hits else None
    site = _read_json(site_file) if site_file is not None else None
    server_args, site_args = _job_args_of(server), _job_args_of(site or {})
    args, source = {}, {}
    for name in [*server_args, *(k for k in site_args if k not in server_args)]:
        where = [w for w, a in (("server", server_args), ("site", site_args)) if name in a]
        args[name] = server_args[name] if name in server_args else site_args[name]
        source[name] = "both" if len(where) == 2 else where[0]
    differ = sorted(k for k in server_args if k in site_args and server_args[k] != site_args[k])
    aggregator = next((c.get("path", "").rsplit(".", 1)[-1] for c in server.get("components", [])
                       if isinstance(c, dict) and c.get("id") == "aggregator"), None)  # fmt: skip
    return {"server_config": str(server_file), "site_config": None if site is None else str(site_file),
            "args": args, "source": source, "differ": differ, "aggregator": aggregator}  # fmt: skip


def _pct(v) -> str:
    return f"{100 * v:g} %"


def _patch(v) -> str:
    return "×".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def job_summary(job: dict, facts: dict | None = None) -> dict[str, str]:
    """One line per group of :data:`JOB_GROUPS`: what the run ran with, in words.

    Args:
        job: :func:`read_job_config`'s result.
        facts: :func:`model_facts` of the global model, for what the preset chose (network, patch,
            classes). Defaults to None.

    Returns:
        ``{group: line}``, e.g. ``{"compression": "up: top 10 % of each tensor's values at 4 bits; ..."}``.
    """
    a, f = job["args"], facts or {}

    from_preset = [name for name in ("network", "patch_size", "num_classes", "in_channels") if a.get(name) is None]

    def value(name):  # a null job arg means the preset's value: the model file says which
        v = a.get(name) if a.get(name) is not None else f.get(name)
        return "?" if v is None else _patch(v)

    out = {}
    fed = f"{a.get('num_rounds', '?')} rounds (0 to {a['num_rounds'] - 1})" if isinstance(a.get("num_rounds"), int) else "rounds: ?"
    fed += f", at least {a.get('min_clients', '?')} sites; "
    fed += (f"a round closes {a.get('wait_after_min_clients')} s after min_clients updates" if a.get("drop_stragglers")
            else "each round waits for every site")  # fmt: skip
    fed += f"; seed {a.get('seed', '?')}" + (f"; resumed from job {a['resume_from']}" if a.get("resume_from") else "")
    out["federation"] = fed
    model = (f"preset {a.get('preset', '?')}: network {value('network')}, patch {value('patch_size')} voxels, "
             f"{value('num_classes')} classes with background, {value('in_channels')} image channel(s)")  # fmt: skip
    if from_preset:
        model += f" ({', '.join(from_preset)}: the preset's)"
    if f.get("n_values"):
        model += f"; {f['n_values']:,} weights ({f['float32_bytes'] / 1e6:.2f} MB as float32)"
    out["model"] = model
    local = f"{a.get('local_steps', '?')} optimiser steps per site and round"
    if a.get("fedprox_mu"):
        local += f", FedProx mu {a['fedprox_mu']:g}"
    if a.get("val_max_cases"):
        local += f", validation on at most {a['val_max_cases']} cases"
    out["local training"] = local
    method = a.get("aggregation")
    if method == "aam":
        out["aggregation"] = (f"AAM (Adaptive Aggregation Mechanism): temperature {a.get('aam_temperature'):g}, "
                              f"weights in [{a.get('aam_floor'):g}, {a.get('aam_cap'):g}], a site's cases count at most "
                              f"{a.get('aam_peer_cases_ratio'):g}× the others' median")  # fmt: skip
    elif method is not None:
        out["aggregation"] = str(method)
    else:
        agg = job.get("aggregator")
        out["aggregation"] = _AGGREGATORS.get(agg, f"{agg} (the job's aggregator)" if agg else "?")
    if a.get("secure_aggregation"):  # the server saw only sums: neither AAM nor the uplink codec ran
        t = a.get("secagg_threshold") or "a majority (at least 2)"
        weights = ("AAM's from the sites' reports (cases, label kinds, Dice; no divergence terms)" if method == "aam"
                   else "the sites' training-case counts")  # fmt: skip
        out["aggregation"] = (f"secure aggregation (pairwise masks with Shamir-shared seeds): the server saw only each "
                              f"round's weighted sum; weights: {weights}; threshold {t} sites")  # fmt: skip
        out["compression"] = (f"up: one support per round for every site, {_pct(a.get('up_ratio', 0.1))} of each tensor's "
                              f"blocks chosen by the sites' summed block scores (small tensors whole), {a.get('up_bits', 4)}-bit "
                              f"values in the fewest ring bits; down: top {_pct(a.get('down_ratio', 0.1))} at "
                              f"{a.get('down_bits', 4)} bits; error feedback at the sites; sites refused to send their "
                              "local models")  # fmt: skip
    elif "up_ratio" in a or "down_ratio" in a:
        parts = []
        if "up_ratio" in a:
            parts.append(f"up: top {_pct(a['up_ratio'])} of the values at {a.get('up_bits')} bits")
        if "down_ratio" in a:
            parts.append(f"down: top {_pct(a['down_ratio'])} at {a.get('down_bits')} bits (the first model at "
                         f"{a.get('down_first_bits')} bits)")  # fmt: skip
        scope = "per tensor" if a.get("compression_scope", "tensor") == "tensor" else "over the whole model"
        block = a.get("compression_block")
        parts.append(f"top-k {scope}, {'one scale per tensor' if not block else f'one scale per {block} values'}, "
                     f"small tensors dense at {a.get('dense_bits')} bits; error feedback at the sites")  # fmt: skip
        out["compression"] = "; ".join(parts)
    else:
        out["compression"] = "none: updates and models travel as float32"
    pers = a.get("personalization", "none")
    line = str(pers)
    if pers == "ditto":
        line += f" (lambda {a.get('ditto_lambda'):g}, {a.get('personal_steps') or a.get('local_steps')} personal steps)"
    elif pers == "finetune":
        line += f" ({a.get('personal_steps') or a.get('local_steps')} fine-tuning steps)"
    if a.get("personal_keys"):
        line += f"; kept at the sites also: {', '.join(map(str, a['personal_keys']))}"
    if a.get("boundary_weight"):
        line += (f"; perturbed boundary loss weight {a['boundary_weight']:g} (band {a.get('boundary_band')} voxels, "
                 f"noise {a.get('boundary_perturbation'):g} sd)")  # fmt: skip
    out["personalisation"] = line
    dp = a.get("dp", "none")
    if dp == "none":
        out["differential privacy"] = "none"
    else:
        noise = (f"noise chosen to spend epsilon {a['dp_target_epsilon']:g} over the run" if a.get("dp_target_epsilon")
                 else f"noise multiplier {a.get('dp_noise')}")  # fmt: skip
        delta = f"delta {a['dp_delta']:g}" if a.get("dp_delta") else "delta min(1e-5, 0.1 / the site's training cases)"
        budget = f", budget epsilon {a['dp_budget']:g}" if a.get("dp_budget") else ""
        out["differential privacy"] = f"DP-SGD, one {dp} as the unit: {noise}, {delta}, clip {a.get('dp_clip'):g}{budget}"
    return out


def _plot_lines(path: Path, rounds, curves: dict, title: str, ylabel: str, styles: dict | None = None,
                hline: tuple[float, str] | None = None, log: bool = False, extra=None) -> Path:  # fmt: skip
    """One line per curve over the rounds; ``extra(ax)`` draws more before the legend."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9.5, 4.2), dpi=100)
    for name, values in curves.items():
        ax.plot(rounds, _nan(values), **{"marker": "o", **(styles or {}).get(name, {})}, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="red", linestyle=":", linewidth=2, label=hline[1])
    if extra is not None:
        extra(ax)
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (from 0, as in FLARE's records)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside the axes: hides no point
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def final_global_dice(cross: dict, records: list[dict]) -> dict | None:
    """The final global model's validation Dice per site, from the cross-site evaluation (no round record
    holds it: a record scores the model a site received at the start of its round).

    Args:
        cross: FLARE's cross-site results (``{site: {model: {"val_dice", ...}}}``).
        records: the round records, for the case counts of the mean (the last record a site is in).

    Returns:
        ``{"sites": {site: Dice}, "mean": mean weighted by training cases (as the records' mean) or None}``;
        None when the cross-site results do not score the final model.
    """
    sites = {site: (models or {}).get(FINAL_MODEL, {}).get("val_dice") for site, models in sorted(cross.items())}
    sites = {k: float(v) for k, v in sites.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if not sites:
        return None
    n = {}
    for r in records:
        n.update({s: e.get("n_train") for s, e in r.get("sites", {}).items() if isinstance(e.get("n_train"), (int, float))})
    weights = {s: n.get(s) for s in sites}
    if all(w for w in weights.values()):
        mean = sum(sites[s] * weights[s] for s in sites) / sum(weights.values())
    else:
        mean = None
    return {"sites": sites, "mean": mean}


def _plot_dice(path: Path, s: dict, final: dict | None) -> Path:
    """Dice per round: per site the global model as received (solid) and its local model (dashed) in one
    colour; the weighted mean in black; the final global model's Dice as stars at the last round."""
    import matplotlib.pyplot as plt

    rounds, colours = s["rounds"], {site: plt.cm.tab10(i % 10) for i, site in enumerate(s["sites"])}
    curves = {"global as received, mean over sites": s["val_dice_global"]}
    styles = {"global as received, mean over sites": {"linewidth": 2.5, "color": "black"}}
    for site in s["sites"]:
        curves[f"{site}: global as received"] = s["site_val_dice_global"][site]
        styles[f"{site}: global as received"] = {"color": colours[site]}
        curves[f"{site} local"] = s["site_val_dice_local"][site]
        styles[f"{site} local"] = {"color": colours[site], "linestyle": "--", "marker": "s", "markersize": 4}

    def stars(ax):
        if not final:
            return
        last = rounds[-1]
        for site, v in final["sites"].items():
            ax.plot([last], [v], marker="*", markersize=13, linestyle="none", color=colours.get(site, "grey"),
                    markeredgecolor="black", label=f"{site}: global (final), cross-site")  # fmt: skip
        if final["mean"] is not None:
            ax.plot([last], [final["mean"]], marker="*", markersize=17, linestyle="none", color="black",
                    label="global (final), mean, cross-site")  # fmt: skip

    return _plot_lines(path, rounds, curves, "Validation Dice per round", "Dice", styles, extra=stars)


def bytes_curves(s: dict) -> dict[str, dict]:
    """The bytes figure's lines: per direction, the sites whose bytes are the same in every round share one.

    Args:
        s: :func:`series` of the records.

    Returns:
        ``{name: {"sites": [site, ...], "direction": "up" | "down", "kB": [value or None per round]}}``,
        named e.g. ``"site-1 up"`` or ``"site-1, site-2 down (identical)"``.
    """
    out = {}
    for direction, key in (("up", "bytes_up"), ("down", "bytes_down")):
        groups: dict[tuple, list[str]] = {}
        for site, values in s[key].items():
            if _has(values):
                groups.setdefault(tuple(values), []).append(site)
        for values, sites in groups.items():
            name = f"{', '.join(sites)} {direction}" + (" (identical)" if len(sites) > 1 else "")
            out[name] = {"sites": sites, "direction": direction, "kB": [None if v is None else v / 1e3 for v in values]}
    return out


def _plot_bytes(path: Path, s: dict, float32_bytes: int | None) -> Path:
    """Bytes per site and round on a log axis: up solid, down dashed, one colour and hollow marker per site
    (a shared line grey, see :func:`bytes_curves`); the model's float32 size dotted."""
    import matplotlib.pyplot as plt

    markers = "osD^vP"
    curves, styles = {}, {}
    for name, c in bytes_curves(s).items():
        i = s["sites"].index(c["sites"][0])
        curves[name] = c["kB"]
        styles[name] = {"color": plt.cm.tab10(i % 10) if len(c["sites"]) == 1 else "dimgrey",  # a shared line is no one site's colour
                        "linestyle": "-" if c["direction"] == "up" else "--", "marker": markers[i % len(markers)],
                        "markerfacecolor": "none", "markersize": 9 - 2 * (i % 3)}  # fmt: skip
    hline = None
    if float32_bytes:
        hline = (float32_bytes / 1e3, f"float32 weights of the global model: {float32_bytes / 1e3:,.0f} kB")
    return _plot_lines(path, s["rounds"], curves, "Bytes on the wire per site and round", "kB (log scale)", styles,
                       hline=hline, log=True)  # fmt: skip


def site_choices(cross: dict) -> dict[str, dict]:
    """``{site: {server model: {"chosen", "val_dice": {candidate: Dice}}}}`` from the cross-site
    results: which model each site kept after validating the server's models (``site_choice``)."""
    out = {}
    for site, models in sorted(cross.items()):
        for owner, metrics in sorted((models or {}).items()):
            choice = (metrics or {}).get("site_choice") if isinstance(metrics, dict) else None
            if isinstance(choice, dict) and choice.get("chosen"):
                out.setdefault(site, {})[owner] = {"chosen": choice["chosen"], "val_dice": dict(choice.get("val_dice") or {})}
    return out


def text_colour(rgba) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with the background colour ``rgba`` (WCAG
    relative luminance of its sRGB values in [0, 1])."""
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "white"


def _plot_matrix(path: Path, cross: dict, key: str, title: str, unit: str) -> tuple[Path, list, list, list] | None:
    """A heatmap of ``key`` for every model (columns, by :func:`display_name`) at every site (rows).

    Returns:
        ``(path, rows, cols, values)`` with FLARE's model names in ``cols``; None when no cell has ``key``.
    """
    import matplotlib.pyplot as plt

    rows = sorted(cross)
    cols = _model_order({m for r in cross.values() for m in r})
    values = [[(cross[r].get(c) or {}).get(key) for c in cols] for r in rows]
    if not any(v is not None for row in values for v in row):
        return None
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in values])
    fig, ax = plt.subplots(figsize=(1.5 * len(cols) + 3, 0.7 * len(rows) + 1.9), dpi=100)
    im = ax.imshow(data, cmap="viridis" if key == "val_dice" else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), [display_name(c) for c in cols], rotation=20, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_xlabel("model")
    ax.set_ylabel("validation split of")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.3f}" if key == "val_dice" else f"{data[i, j]:.1f}", ha="center", va="center",
                        color=text_colour(im.cmap(im.norm(data[i, j]))), fontsize=9)  # fmt: skip
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=unit)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, rows, cols, values


LABEL_FILLS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b")
"""Per class (in order): the label's translucent fill in the slices figure."""
PREDICTION_LINES = ("#ffd700", "#ff1493", "#ff7f0e", "#ff2020", "#ffffff")
"""Per class (in order): the prediction's contour line, warm where the label's fills are cool."""


def _plot_slices(
    path: Path, image: np.ndarray, label: np.ndarray | None, pred: np.ndarray, title: str, class_names: list[str] | None = None
) -> Path:
    """Three axial slices; per class the label as a translucent fill and the prediction as a contour
    line of another colour, named in the legend."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    mask = label if label is not None and (label > 0).any() else pred
    area = (mask > 0).sum(axis=(0, 1))
    z_fg = np.where(area > 0)[0]
    if len(z_fg):  # the slice with the most foreground, and halfway to either end of the foreground
        top = int(np.argmax(area))
        zs = [int(round((z_fg.min() + top) / 2)), top, int(round((top + z_fg.max()) / 2))]
    else:
        zs = [image.shape[2] // 4, image.shape[2] // 2, 3 * image.shape[2] // 4]
    classes = sorted(int(c) for c in (set(np.unique(pred)) | (set(np.unique(label)) if label is not None else set())) - {0})
    fill = {c: LABEL_FILLS[i % len(LABEL_FILLS)] for i, c in enumerate(classes)}
    line = {c: PREDICTION_LINES[i % len(PREDICTION_LINES)] for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.6), dpi=100)
    for ax, z in zip(axes, zs):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        if label is not None:
            overlay = np.zeros((*label[:, :, z].T.shape, 4))
            for cls in classes:
                overlay[label[:, :, z].T == cls] = to_rgba(fill[cls], alpha=0.45)
            ax.imshow(overlay, origin="lower", interpolation="nearest")
        for cls in classes:
            if (pred[:, :, z] == cls).any():
                ax.contour((pred[:, :, z] == cls).T, levels=[0.5], colors=[line[cls]], linewidths=1.8)
        ax.set_title(f"slice z={z}", fontsize=9)
        ax.axis("off")
    names = class_names or []

    def name(c):
        return names[c] if c < len(names) else f"class {c}"

    handles = []
    for c in classes:
        if label is not None:
            handles.append(Patch(facecolor=to_rgba(fill[c], alpha=0.45), edgecolor=fill[c], label=f"{name(c)}: label (fill)"))
        handles.append(Line2D([], [], color=line[c], lw=2.2, label=f"{name(c)}: prediction (line)"))
    legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=True)
    legend.get_frame().set_facecolor("#555555")  # the bright lines need a dark ground
    for text in legend.get_texts():
        text.set_color("white")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _kept(site: str, owner: str, chosen: str) -> str:
    """The report's name of the model a site kept after validating the server's model ``owner``."""
    return {"global": display_name(owner), "local": f"{site} local", "personal": f"{site} personalised"}.get(chosen, chosen)


def _table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _f(v, digits=3):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def build_report(run_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = None, device: str | None = None) -> Path:
    """Write PNG figures, ``report.json`` and ``index.html`` into ``out_dir``; returns the HTML path.

    Args:
        run_dir: a simulator workspace, a downloaded job result or a server job folder.
        out_dir: where the report goes (created).
        data_dir: a held-out test folder (``dataset.json``) for the per-class and per-case tables and
            the slices. Defaults to None (no evaluation).
        device: torch device for the evaluation. Defaults to None (CUDA when available).

    Raises:
        FedSegNetError: no records under ``run_dir``; a test folder that fails preflight or does
            not fit the model (from the evaluation).
    """
    import matplotlib

    matplotlib.use("Agg")
    paths = find_run(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = read_records(paths["records"])
    if not records:
        raise FedSegNetError(f"{paths['records']}: holds no round record")
    s = series(records)
    figures = []  # (file name, caption)
    rounds = s["rounds"]
    job = read_job_config(paths["records"].parent, run_dir)
    facts = model_facts(paths["model"])
    cross = json.loads(paths["cross_site"].read_text()) if paths["cross_site"] else {}
    final = final_global_dice(cross, records)

    _plot_dice(out / "dice_per_round.png", s, final)
    caption = ("Validation Dice on each site's validation split, one colour per site: the global model the site "
               "received at the start of the round (solid) and its model after local training (dashed); black: "
               "the received global model's mean weighted by training cases.")  # fmt: skip
    if final:
        caption += (f" Stars at the last round ({rounds[-1]}): the final global model, made by round {rounds[-1]}'s "
                    "aggregation, which no round record scores; its Dice is FLARE's cross-site evaluation on the "
                    "same validation splits (black star: weighted the same way).")  # fmt: skip
    figures.append(("dice_per_round.png", caption))
    if _has(s["train_loss"]):
        _plot_lines(out / "train_loss_per_round.png", rounds, s["train_loss"], "Training loss per round", "Dice + cross-entropy loss")
        figures.append(("train_loss_per_round.png", "Mean training loss (Dice + cross-entropy) of each site's local steps in the round."))
    if _has(s["bytes_up"]):
        _plot_bytes(out / "bytes_per_round.png", s, (facts or {}).get("float32_bytes"))
        caption = ("Serialized message size per site and round as FLARE sent it, on a log scale (up, solid: the "
                   "site's encoded update; down, dashed: the global model or its difference). Sites whose bytes "
                   "are the same in every round share one line.")  # fmt: skip
        if facts and facts.get("float32_bytes"):
            caption += (f" Dotted: the global model's {facts['n_values']:,} weights as float32 "
                        f"({facts['float32_bytes'] / 1e3:,.0f} kB), what one uncompressed model would take.")  # fmt: skip
        figures.append(("bytes_per_round.png", caption))
    if _has(s["aam_weight"]):
        _plot_lines(out / "aam_weights.png", rounds, s["aam_weight"], "AAM weight per site and round", "weight")
        figures.append(("aam_weights.png", "Aggregation weight AAM gave each site's update (missing point: the update was dropped or not received)."))
    if _has(s["dp_epsilon"]):
        budget = s["dp_budget"]
        _plot_lines(out / "dp_epsilon.png", rounds, s["dp_epsilon"], "Privacy spent per site (epsilon)", "epsilon",
                    hline=(budget, f"budget {budget:g}") if budget else None)  # fmt: skip
        figures.append(("dp_epsilon.png", "Epsilon each site has spent after each round (patient-level DP-SGD, all "
                        "steps of all rounds composed); dotted: the budget. A missing point: the site did not train that round."))  # fmt: skip
    if _has(s["rss_mb"]) or _has(s["server_rss_mb"]):
        mem = {"server job process": s["server_rss_mb"], **{f"{site} job process": v for site, v in s["rss_mb"].items()}}
        _plot_lines(out / "memory_per_round.png", rounds, mem, "Resident memory per round", "MiB")
        figures.append(("memory_per_round.png", "Resident memory (RSS) of the server's and each site's job process."))

    cross_tables = []
    matrices = {}
    for key, name, title, unit in (("val_dice", "cross_site_dice.png", "Cross-site Dice", "Dice (higher is better)"),
                                   ("val_hd95", "cross_site_hd95.png", "Cross-site HD95 (mm)", "HD95 in mm (lower is better)")):  # fmt: skip
        made = _plot_matrix(out / name, cross, key, title, unit) if cross else None
        if made:
            _, rows, cols, values = made
            matrices[key] = {"rows": rows, "cols": cols, "display_cols": [display_name(c) for c in cols], "values": values}
            figures.append((name, f"{title}: every model (columns: global (final) after the last round, global (best) as "
                                  "FLARE's model selector kept it, and each site's last local model) evaluated on every "
                                  "site's validation split (rows)."))  # fmt: skip
            cross_tables.append((title, _table(["validation split of \\ model", *[display_name(c) for c in cols]],
                                               [[r, *[_f(v, 3 if key == 'val_dice' else 1) for v in row]] for r, row in zip(rows, values)])))  # fmt: skip

    choices = site_choices(cross)
    if choices:
        rows = [[site, display_name(owner), _kept(site, owner, c["chosen"]), *[_f(c["val_dice"].get(k)) for k in ("global", "personal", "local")]]
                for site, owners in choices.items() for owner, c in owners.items()]  # fmt: skip
        cross_tables.append(("Model each site keeps (best on its validation split)",
                             _table(["site", "server's model", "kept", "val Dice global", "personal", "local"], rows)))  # fmt: skip

    evaluation = None
    if data_dir is not None and paths["model"] is not None:
        evaluation = _evaluate(paths["model"], Path(data_dir), out, device, figures)

    ledger = ledger_summary(paths["records"].parent)
    names = sorted({c for m in matrices.values() for c in m["cols"]} | {o for owners in choices.values() for o in owners})
    summary = job_summary(job, facts) if job else None
    report = {"run": str(Path(run_dir).resolve()), "files": {k: str(v) if v else None for k, v in paths.items()},
              "round_numbering": ROUND_NUMBERING, "job": None if job is None else {**job, "summary": summary},
              "model": facts, "display_names": {n: display_name(n) for n in names}, "series": s,
              "final_global_dice": final, "cross_site": matrices, "site_choices": choices, "test": evaluation,
              "ledger": ledger}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _write_html(out, paths, s, figures, cross_tables, evaluation, ledger, job=job, summary=summary, final=final)
    return out / "index.html"


def ledger_summary(job_dir: Path) -> dict | None:
    """The ledger of a server job folder, verified: ``{"folder", "ok", "summary", "last_head",
    "entries": [{"label", "ok", "signed_by", "witnessed_by", "problems"}], "notes"}``; None without one."""
    from fedsegnet.ledger import LEDGER_FOLDER, verify

    folder = Path(job_dir) / LEDGER_FOLDER
    if not (folder / "LEDGER.json").is_file():
        return None
    app = Path(job_dir) / "app_server"
    models = {k: app / f for k, f in (("final", MODEL), ("best", f"best_{MODEL}")) if (app / f).is_file()}
    result = verify(folder, models=models)
    heads_file = folder / "heads.jsonl"
    lines = heads_file.read_text(errors="replace").splitlines() if heads_file.is_file() else []
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:  # a torn last line: verify reports it
        last = None
    return {
        "folder": str(folder),
        "ok": result.ok,
        "summary": result.lines()[-1],
        "last_head": None if last is None else {k: last.get(k) for k in ("size", "root", "signer", "key_source", "timestamp", "round")},
        "entries": [{"label": c.label, "ok": c.ok, "signed_by": c.signed_by, "witnessed_by": list(c.witnessed_by),
                     "problems": list(c.problems)} for c in result.checks],  # fmt: skip
        "notes": list(result.notes),
        "models_checked": sorted(models),
    }


def _evaluate(model_path: Path, data_dir: Path, out: Path, device, figures: list) -> dict:
    import nibabel as nib

    from fedsegnet.data.datalist import load_datalist
    from fedsegnet.training.spec import load_model_file, preset_from_spec
    from fedsegnet.training.infer import predict_case
    from fedsegnet.training.evaluate_file import evaluate_model_file
    from fedsegnet.training.site import pick_device, site_label_map

    device = pick_device(device)
    result, spec = evaluate_model_file(model_path, data_dir, device=device)
    summary = result.to_dict()
    per_case = [_case_row(c, result.class_names) for c in result.per_case]
    datalist = load_datalist(data_dir)
    cases = datalist.test or datalist.validation or datalist.training
    case = cases[0]
    model, spec = load_model_file(model_path)
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    pred, ref = predict_case(model, spec, images, device=device)
    image = np.asarray(ref.dataobj, dtype=np.float32)
    image = image[..., 0] if image.ndim == 4 else image
    label = np.asarray(nib.load(case["label"]).dataobj).astype(np.int64) if case.get("label") else None
    # both as class ids: the label through the site's label map, the prediction back from written values
    label_map = site_label_map(datalist, preset_from_spec(spec))
    if label is not None:
        label = label_map.to_class_ids(label)
    if spec.get("label_values"):
        back = np.zeros(max(spec["label_values"]) + 1, dtype=np.int64)
        back[spec["label_values"]] = np.arange(len(spec["label_values"]))
        pred = back[pred]
    name = Path(images[0]).name
    _plot_slices(out / "test_case_slices.png", image, label, pred, f"{name}: global (final) model", list(label_map.class_names))
    figures.append(("test_case_slices.png", f"Three slices of held-out case {name} (first channel): per class the "
                    "label as a translucent fill and the global (final) model's prediction as a line of another "
                    "colour (legend below the slices)."))  # fmt: skip
    return {"summary": summary, "per_case": per_case, "slices_case": name, "data": str(data_dir)}


def _case_row(case: dict, class_names: dict) -> dict:
    """One held-out case's scores by name: ``{"name", "dice_mean" (over classes, as the summary's),
    "dice": {class or region: Dice}, "hd95": {class or region: mm or None}}`` (classes first)."""
    def named(scores):  # class ids (int) by their names, then the regions (by name already)
        classes = {str(class_names.get(k, k)): v for k, v in scores.items() if isinstance(k, int)}
        return {**classes, **{str(k): v for k, v in scores.items() if not isinstance(k, int)}}

    class_dice = [v for k, v in case["dice"].items() if isinstance(k, int)]
    return {"name": case["name"], "dice_mean": _mean_of(class_dice), "dice": named(case["dice"]), "hd95": named(case["hd95"])}


def _mean_of(values) -> float | None:
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _ledger_html(ledger: dict) -> list[str]:
    head = ledger["last_head"] or {}
    verdict = "verified" if ledger["ok"] else "<b>FAILED</b>"
    parts = [
        "<h2>Ledger</h2>",
        f"<p><code>{html.escape(ledger['folder'])}</code>: {verdict} ({html.escape(ledger['summary'])}). "
        f"Last signed head: size {head.get('size')}, root <code>{html.escape(str(head.get('root'))[:16])}...</code>, "
        f"signed by {html.escape(str(head.get('signer')))} ({html.escape(str(head.get('key_source')))}) at "
        f"{html.escape(str(head.get('timestamp')))}. Model files checked against it: "
        f"{html.escape(', '.join(ledger['models_checked']) or 'none')}. Checked against the certificates the ledger "
        "stores; <code>fedsegnet ledger verify RUN --kits KITS</code> checks them against the project's kits.</p>",
    ]
    rows = [[e["label"], "OK" if e["ok"] else "FAIL", e["signed_by"] or "", ", ".join(e["witnessed_by"]), "; ".join(e["problems"])]
            for e in ledger["entries"]]  # fmt: skip (_table escapes)
    parts.append(_table(["entry", "check", "signed by", "witnessed by", "problems"], rows))
    if ledger["notes"]:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in ledger["notes"]) + "</ul>")
    return parts


def _job_html(job: dict, summary: dict) -> list[str]:
    source = f"<code>{html.escape(job['server_config'])}</code>"
    source += (f" and <code>{html.escape(job['site_config'])}</code>" if job["site_config"]
               else " (no site's config in the run folder: the sites' settings are not shown)")  # fmt: skip
    parts = ["<h2>What ran</h2>", f"<p>Job args read from {source}.</p>",
             _table(["", "setting"], [[group, line] for group, line in summary.items()]).replace("<table>", "<table class='left'>", 1)]  # fmt: skip
    if job["differ"]:
        parts.append("<p><b>The server's and the sites' configs differ</b> in: "
                     f"{html.escape(', '.join(job['differ']))} (the table shows the server's).</p>")  # fmt: skip
    grouped = {name for _, names in JOB_GROUPS for name in names}
    rows = [[k, json.dumps(v), job["source"][k]] for k, v in job["args"].items()]
    parts.append(f"<details><summary>All {len(rows)} job args ({len([k for k in job['args'] if k not in grouped])} "
                 "not in the table above)</summary>"
                 + _table(["job arg", "value", "config"], rows).replace("<table>", "<table class='left'>", 1)
                 + "</details>")  # fmt: skip
    return parts


def _write_html(out: Path, paths: dict, s: dict, figures: list, cross_tables: list, evaluation: dict | None,
                ledger: dict | None = None, job: dict | None = None, summary: dict | None = None,
                final: dict | None = None):  # fmt: skip
    first, last = s["rounds"][0], s["rounds"][-1]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>FedSegNet report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "table.left td,table.left th{text-align:left}"
        "figcaption{color:#444;font-size:90%}</style></head><body>",
        "<h1>FedSegNet run report</h1>",
        f"<p>Run: <code>{html.escape(str(paths['records'].parent))}</code>; {len(s['rounds'])} round(s), "
        f"rounds {first} to {last}; sites: {html.escape(', '.join(s['sites']))}.</p>",
        f"<p>{html.escape(ROUND_NUMBERING)} Models: <i>global (final)</i> is the global model after the last "
        "round, <i>global (best)</i> the one FLARE's model selector kept (best mean validation Dice), "
        "<i>site-N local</i> a site's last local model.</p>",
    ]
    if job and summary:
        parts += _job_html(job, summary)
    if s["missed_rounds"]:
        parts.append(f"<p><b>Sites that missed more than {MISSED_ROUNDS_NAMED} rounds</b> (their data did not "
                     "reach the global model in those rounds):</p><ul>")  # fmt: skip
        parts += [f"<li>{html.escape(m['text'])}</li>" for m in s["missed_rounds"].values()]
        parts.append("</ul>")
    if s["secure_rounds"]:
        parts.append("<h2>Secure aggregation rounds</h2><p>The server learned only each round's sum of the survivors' "
                     "masked inputs; drop-outs name the step and the reason.</p>")  # fmt: skip
        parts.append(_table(["round", "survivors", "dropped", "weights", "support", "planned from"], [
            [str(r["round"]), ", ".join(r.get("survivors") or []) or "none (no aggregate)",
             "; ".join(f"{site} at {d.get('step')}: {d.get('reason')}" for site, d in (r.get("dropped") or {}).items()) or "none",
             str(r.get("weighting", "?")),
             (f"{r['plan']['support_values']:,} values, {r['plan']['value_bits']}-bit in Z_2^{r['plan']['ring_bits']}"
              if r.get("plan") else "-"), str(r.get("planned_from", "-"))]
            for r in s["secure_rounds"]
        ]))  # fmt: skip
    if _has(s["dp_epsilon"]):
        spent = {site: next((v for v in reversed(vals) if v is not None), None) for site, vals in s["dp_epsilon"].items()}
        budget = s["dp_budget"]
        parts.append("<h2>Differential privacy</h2><p>Patient-level DP-SGD at every site; epsilon spent in all "
                     f"(delta as each site reports it){'' if not budget else f', budget {budget:g}'}:</p>")  # fmt: skip
        parts.append(_table(["site", "epsilon spent"], [[site, _f(v)] for site, v in spent.items()]))
    rows = []
    finals = (final or {}).get("sites", {})
    for site in s["sites"]:
        v = {k: s[k][site][-1] for k in ("site_val_dice_global", "site_val_dice_local", "bytes_up", "aam_weight")}
        rows.append([site, _f(v["site_val_dice_global"]), _f(v["site_val_dice_local"]), _f(finals.get(site)),
                     "n/a" if v["bytes_up"] is None else f"{v['bytes_up']:,}", _f(v["aam_weight"])])  # fmt: skip
    parts.append(f"<h2>Last round (round {last})</h2>")
    parts.append(_table(["site", "val Dice: global as received", "local", "global (final), cross-site", "bytes up", "AAM weight"], rows))
    if evaluation:
        summary_t = evaluation["summary"]
        parts.append(f"<h2>Global (final) model on the held-out test set</h2><p>{summary_t['n_cases']} case(s) from "
                     f"<code>{html.escape(evaluation['data'])}</code>; mean Dice {_f(summary_t['dice_mean'])}, "
                     f"mean HD95 {_f(summary_t['hd95_mean'], 2)} mm.</p>")  # fmt: skip
        class_rows = [[name, _f(c["dice"]), _f(c["hd95"], 2), c.get("n_missing_pred", ""), c.get("n_missing_label", ""), c.get("n_both_empty", "")]
                      for name, c in summary_t["per_class"].items()]  # fmt: skip
        parts.append(_table(["class", "Dice", "HD95 (mm)", "cases: empty prediction", "empty label", "both empty"], class_rows))
        if summary_t.get("per_region"):
            region_rows = [[name, _f(c["dice"]), _f(c["hd95"], 2), c.get("n_missing_pred", ""), c.get("n_missing_label", ""), c.get("n_both_empty", "")]
                           for name, c in summary_t["per_region"].items()]  # fmt: skip
            parts.append(f"<p>Regions (unions of classes), mean Dice {_f(summary_t.get('region_dice_mean'))}:</p>")
            parts.append(_table(["region", "Dice", "HD95 (mm)", "cases: empty prediction", "empty label", "both empty"], region_rows))
        cases = evaluation.get("per_case") or []
        if cases:
            names = list(cases[0]["dice"])
            parts.append("<h3>Per case</h3><p>Dice and HD95 (mm) of each held-out case, in the order of its "
                         "<code>dataset.json</code>; n/a: HD95 is undefined where the label or the prediction lacks "
                         "the class.</p>")  # fmt: skip
            parts.append(_table(["case", "mean Dice", *[f"Dice {n}" for n in names], *[f"HD95 {n}" for n in names]],
                                [[c["name"], _f(c["dice_mean"]), *[_f(c["dice"].get(n)) for n in names],
                                  *[_f(c["hd95"].get(n), 2) for n in names]] for c in cases]))  # fmt: skip
    for title, table in cross_tables:
        parts.append(f"<h2>{html.escape(title)}</h2>{table}")
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    if ledger:
        parts += _ledger_html(ledger)
    if s["errors"] or s["missing_sites"]:
        parts.append("<h2>Site errors and missing updates</h2><ul>")
        parts += [f"<li>round {e['round']}: {html.escape(str(e.get('site')))}: {html.escape(str(e.get('message')))}</li>" for e in s["errors"]]
        parts += [f"<li>round {r}: no contribution from {html.escape(site)}"
                  f"{html.escape(': ' + why['reason'] if why.get('reason') else '')} ({html.escape(str(why.get('detail')))})</li>"
                  for r, missing in s["missing_sites"].items() for site, why in missing.items()]  # fmt: skip
        parts.append("</ul>")
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts))
