"""`fedsegnet report`: figures and one HTML page from what a simulator or POC run left on disk.

Reads the server's per-round records (``fedsegnet_rounds.jsonl``), the cross-site evaluation
(``cross_site_val/cross_val_results.json``) and the global model (``app_server/FL_global_model.pt``)
found under a run folder: a simulator workspace, a POC or production job result downloaded through
the admin API, or a server job folder. With a held-out test folder (``--data``) it also evaluates the
global model per class (Dice, HD95 in mm) and draws slices of a test case with the label and the
predicted contour. When the job kept a ledger (``fedsegnet_ledger/``), the page has a ledger
section: it is verified (its stored certificates; ``fedsegnet ledger verify --kits`` checks them
against the project's kits), with the last signed head and, per entry, who signed and who witnessed
it. Every plotted series is also written to ``report.json``, read from the run, so the figures can
be checked against the records. matplotlib (Agg backend); no network access.
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


def _plot_lines(path: Path, rounds, curves: dict, title: str, ylabel: str, styles: dict | None = None,
                hline: tuple[float, str] | None = None) -> Path:  # fmt: skip
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, values in curves.items():
        ax.plot(rounds, _nan(values), marker="o", label=name, **(styles or {}).get(name, {}))
    if hline is not None:
        ax.axhline(hline[0], color="red", linestyle=":", linewidth=2, label=hline[1])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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


def _plot_matrix(path: Path, cross: dict, key: str, title: str) -> tuple[Path, list, list, list] | None:
    import matplotlib.pyplot as plt

    rows = sorted(cross)
    cols = sorted({m for r in cross.values() for m in r})
    values = [[(cross[r].get(c) or {}).get(key) for c in cols] for r in rows]
    if not any(v is not None for row in values for v in row):
        return None
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in values])
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 0.7 * len(rows) + 1.8), dpi=100)
    im = ax.imshow(data, cmap="viridis" if key == "val_dice" else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("evaluated at site")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.3f}" if key == "val_dice" else f"{data[i, j]:.1f}", ha="center", va="center",
                        color="white", fontsize=8)  # fmt: skip
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, rows, cols, values


def _plot_slices(
    path: Path, image: np.ndarray, label: np.ndarray | None, pred: np.ndarray, title: str, class_names: list[str] | None = None
) -> Path:
    """Three axial slices; per class one colour, the label solid, the prediction dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    mask = label if label is not None and (label > 0).any() else pred
    area = (mask > 0).sum(axis=(0, 1))
    z_fg = np.where(area > 0)[0]
    if len(z_fg):  # the slice with the most foreground, and halfway to either end of the foreground
        top = int(np.argmax(area))
        zs = [int(round((z_fg.min() + top) / 2)), top, int(round((top + z_fg.max()) / 2))]
    else:
        zs = [image.shape[2] // 4, image.shape[2] // 2, 3 * image.shape[2] // 4]
    classes = sorted((set(np.unique(pred)) | (set(np.unique(label)) if label is not None else set())) - {0})
    colour = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.2), dpi=100)
    for ax, z in zip(axes, zs):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        for cls in classes:
            if label is not None and (label[:, :, z] == cls).any():
                ax.contour((label[:, :, z] == cls).T, levels=[0.5], colors=[colour[cls]], linewidths=1.4)
            if (pred[:, :, z] == cls).any():
                ax.contour((pred[:, :, z] == cls).T, levels=[0.5], colors=[colour[cls]], linewidths=1.4, linestyles="dashed")
        ax.set_title(f"slice z={z}", fontsize=9)
        ax.axis("off")
    names = class_names or []
    handles = [Line2D([], [], color=colour[c], lw=1.4, label=names[c] if c < len(names) else f"class {c}") for c in classes]
    handles += [Line2D([], [], color="k", lw=1.4, label="label (solid)"), Line2D([], [], color="k", lw=1.4, ls="--", label="prediction (dashed)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


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
        data_dir: a held-out test folder (``dataset.json``) for the per-class table and slices.
            Defaults to None (no evaluation).
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

    curves = {"global model (weighted mean)": s["val_dice_global"]}
    curves.update({f"{site}: received global": v for site, v in s["site_val_dice_global"].items()})
    curves.update({f"{site}: local": v for site, v in s["site_val_dice_local"].items()})
    styles = {f"{site}: local": {"linestyle": "--"} for site in s["sites"]}
    styles["global model (weighted mean)"] = {"linewidth": 2.5, "color": "black"}
    _plot_lines(out / "dice_per_round.png", rounds, curves, "Validation Dice per round", "Dice", styles)
    figures.append(("dice_per_round.png", "Validation Dice on each site's validation split: the global model the site received at the start of the round (solid) and its model after local training (dashed); black: mean weighted by training cases."))
    if _has(s["train_loss"]):
        _plot_lines(out / "train_loss_per_round.png", rounds, s["train_loss"], "Training loss per round", "Dice + cross-entropy loss")
        figures.append(("train_loss_per_round.png", "Mean training loss (Dice + cross-entropy) of each site's local steps in the round."))
    if _has(s["bytes_up"]):
        b = {f"{site} up": [None if v is None else v / 1e3 for v in vals] for site, vals in s["bytes_up"].items()}
        b.update({f"{site} down": [None if v is None else v / 1e3 for v in vals] for site, vals in s["bytes_down"].items()})
        _plot_lines(out / "bytes_per_round.png", rounds, b, "Bytes on the wire per round", "kB")
        figures.append(("bytes_per_round.png", "Serialized message size per site and round, as FLARE sent it (up: the site's encoded update; down: the global model or its difference)."))
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
    cross = json.loads(paths["cross_site"].read_text()) if paths["cross_site"] else {}
    matrices = {}
    for key, name, title in (("val_dice", "cross_site_dice.png", "Cross-site Dice"), ("val_hd95", "cross_site_hd95.png", "Cross-site HD95 (mm)")):
        made = _plot_matrix(out / name, cross, key, title) if cross else None
        if made:
            _, rows, cols, values = made
            matrices[key] = {"rows": rows, "cols": cols, "values": values}
            figures.append((name, f"{title}: every model (columns: the final global model and each site's last local model) evaluated on every site's validation split (rows)."))
            cross_tables.append((title, _table(["site \\ model", *cols], [[r, *[_f(v, 3 if key == 'val_dice' else 1) for v in row]] for r, row in zip(rows, values)])))

    choices = site_choices(cross)
    if choices:
        rows = [[site, owner, c["chosen"], *[_f(c["val_dice"].get(k)) for k in ("global", "personal", "local")]]
                for site, owners in choices.items() for owner, c in owners.items()]  # fmt: skip
        cross_tables.append(("Model each site keeps (best on its validation split)",
                             _table(["site", "from server model", "kept", "val Dice global", "personal", "local"], rows)))  # fmt: skip

    evaluation = None
    if data_dir is not None and paths["model"] is not None:
        evaluation = _evaluate(paths["model"], Path(data_dir), out, device, figures)

    ledger = ledger_summary(paths["records"].parent)
    report = {"run": str(Path(run_dir).resolve()), "files": {k: str(v) if v else None for k, v in paths.items()},
              "series": s, "cross_site": matrices, "site_choices": choices, "test": evaluation, "ledger": ledger}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _write_html(out, paths, s, figures, cross_tables, evaluation, ledger)
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
    _plot_slices(out / "test_case_slices.png", image, label, pred, f"{name}: global model", list(label_map.class_names))
    figures.append(("test_case_slices.png", f"Three slices of held-out case {name} (first channel): each class in one colour, the label solid, the global model's prediction dashed."))
    return {"summary": summary, "slices_case": name, "data": str(data_dir)}


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


def _write_html(out: Path, paths: dict, s: dict, figures: list, cross_tables: list, evaluation: dict | None,
                ledger: dict | None = None):  # fmt: skip
    last = s["rounds"][-1]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>FedSegNet report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "figcaption{color:#444;font-size:90%}</style></head><body>",
        "<h1>FedSegNet run report</h1>",
        f"<p>Run: <code>{html.escape(str(paths['records'].parent))}</code>; {len(s['rounds'])} round(s), "
        f"sites: {html.escape(', '.join(s['sites']))}.</p>",
    ]
    if s["missed_rounds"]:
        parts.append(f"<p><b>Sites that missed more than {MISSED_ROUNDS_NAMED} rounds</b> (their data did not "
                     "reach the global model in those rounds):</p><ul>")  # fmt: skip
        parts += [f"<li>{html.escape(m['text'])}</li>" for m in s["missed_rounds"].values()]
        parts.append("</ul>")
    if _has(s["dp_epsilon"]):
        spent = {site: next((v for v in reversed(vals) if v is not None), None) for site, vals in s["dp_epsilon"].items()}
        budget = s["dp_budget"]
        parts.append("<h2>Differential privacy</h2><p>Patient-level DP-SGD at every site; epsilon spent in all "
                     f"(delta as each site reports it){'' if not budget else f', budget {budget:g}'}:</p>")  # fmt: skip
        parts.append(_table(["site", "epsilon spent"], [[site, _f(v)] for site, v in spent.items()]))
    rows = []
    final = {site: {k: s[k][site][-1] for k in ("site_val_dice_global", "site_val_dice_local", "bytes_up", "aam_weight")} for site in s["sites"]}
    for site, v in final.items():
        rows.append([site, _f(v["site_val_dice_global"]), _f(v["site_val_dice_local"]),
                     "n/a" if v["bytes_up"] is None else f"{v['bytes_up']:,}", _f(v["aam_weight"])])  # fmt: skip
    parts.append(f"<h2>Last round ({last})</h2>")
    parts.append(_table(["site", "val Dice (received global)", "val Dice (local)", "bytes up", "AAM weight"], rows))
    if evaluation:
        summary = evaluation["summary"]
        parts.append(f"<h2>Global model on the held-out test set</h2><p>{summary['n_cases']} case(s) from "
                     f"<code>{html.escape(evaluation['data'])}</code>; mean Dice {_f(summary['dice_mean'])}, "
                     f"mean HD95 {_f(summary['hd95_mean'], 2)} mm.</p>")  # fmt: skip
        class_rows = [[name, _f(c["dice"]), _f(c["hd95"], 2), c.get("n_missing_pred", ""), c.get("n_missing_label", ""), c.get("n_both_empty", "")]
                      for name, c in summary["per_class"].items()]  # fmt: skip
        parts.append(_table(["class", "Dice", "HD95 (mm)", "cases: empty prediction", "empty label", "both empty"], class_rows))
        if summary.get("per_region"):
            region_rows = [[name, _f(c["dice"]), _f(c["hd95"], 2), c.get("n_missing_pred", ""), c.get("n_missing_label", ""), c.get("n_both_empty", "")]
                           for name, c in summary["per_region"].items()]  # fmt: skip
            parts.append(f"<p>Regions (unions of classes), mean Dice {_f(summary.get('region_dice_mean'))}:</p>")
            parts.append(_table(["region", "Dice", "HD95 (mm)", "cases: empty prediction", "empty label", "both empty"], region_rows))
    for title, table in cross_tables:
        parts.append(f"<h2>{html.escape(title)}</h2>{table}")
    if ledger:
        parts += _ledger_html(ledger)
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    if s["errors"] or s["missing_sites"]:
        parts.append("<h2>Site errors and missing updates</h2><ul>")
        parts += [f"<li>round {e['round']}: {html.escape(str(e.get('site')))}: {html.escape(str(e.get('message')))}</li>" for e in s["errors"]]
        parts += [f"<li>round {r}: no contribution from {html.escape(site)}"
                  f"{html.escape(': ' + why['reason'] if why.get('reason') else '')} ({html.escape(str(why.get('detail')))})</li>"
                  for r, missing in s["missing_sites"].items() for site, why in missing.items()]  # fmt: skip
        parts.append("</ul>")
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts))
