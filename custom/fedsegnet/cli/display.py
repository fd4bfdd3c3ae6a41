"""What several commands print: numbers, an evaluation table, the lines of one round record."""

from __future__ import annotations

import math


def fmt(x, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or ``"n/a"`` for None, NaN and infinities.

    Args:
        x: the number (or None).
        digits: decimals shown. Defaults to 3.

    Returns:
        The text, e.g. ``"0.812"``.
    """
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def print_eval_table(summary: dict, title: str = "") -> None:
    """Print an EvalResult summary (``to_dict()``) as a small table.

    Args:
        summary: ``EvalResult.to_dict()``: per-class (and per-region) Dice, HD95 and missing counts.
        title: a line printed above the table. Defaults to ``""`` (none).
    """
    if title:
        print(title)
    for what, rows in (("class", summary["per_class"]), ("region", summary.get("per_region") or {})):
        if not rows:
            continue
        print(f"  {what:<16}{'Dice':>8}{'HD95 mm':>10}   missing (pred / label / both)")
        for name, row in rows.items():
            print(
                f"  {str(name):<16}{fmt(row.get('dice')):>8}{fmt(row.get('hd95'), 2):>10}   "
                f"{row.get('n_missing_pred', 0)} / {row.get('n_missing_label', 0)} / {row.get('n_both_empty', 0)}"
            )
        if what == "class":
            print(f"  {'mean':<16}{fmt(summary['dice_mean']):>8}{fmt(summary['hd95_mean'], 2):>10}   ({summary['n_cases']} cases)")
        else:
            print(f"  {'region mean':<16}{fmt(summary['region_dice_mean']):>8}")


def round_lines(rec: dict, rounds: int | str) -> list[str]:
    """What the demo and ``poc`` print for one round record: Dice, bytes, AAM weights (or drops), the
    epsilon each site has spent (with DP), site errors.

    Args:
        rec: one round record as the server writes it (``round`` counts from 0).
        rounds: the number of rounds of the job (``"?"`` when unknown).

    The round is named by its number in the records, FLARE's logs, TensorBoard, the ledger and
    ``fedsegnet report`` (from 0), followed by how far the job is: ``round 0 (1 of 6)``.

    Returns:
        The lines, without newlines.
    """
    lines = [
        f"      round {rec['round']} ({rec['round'] + 1} of {rounds}): val Dice of the received global model "
        f"{fmt(rec.get('val_dice_global'))}, of the local models {fmt(rec.get('val_dice_local'))} "
        f"({fmt(rec.get('seconds'), 1)} s)"
        + (
            f", {rec['bytes_up'] / 1e3:,.0f} kB up and {rec['bytes_down'] / 1e3:,.0f} kB down (all sites)"
            if "bytes_up" in rec
            else ""
        )
    ]
    aggregation = {s: v["aggregation"] for s, v in rec.get("sites", {}).items() if v.get("aggregation")}
    if aggregation:
        lines.append("        AAM weights: " + ", ".join(
            f"{s} {a['weight']:.2f}" if a.get("accepted") else f"{s} dropped ({a.get('gate')})"
            for s, a in aggregation.items()
        ))  # fmt: skip
    spent = {s: v["dp"] for s, v in rec.get("sites", {}).items() if isinstance(v.get("dp"), dict)}
    if spent:
        budget = next((d["budget"] for d in spent.values() if d.get("budget")), None)
        lines.append("        epsilon spent: " + ", ".join(f"{s} {fmt(d.get('epsilon'), 2)}" for s, d in spent.items())
                     + (f" (budget {budget:g})" if budget else ""))  # fmt: skip
    lines += [f"      ERROR from {err['site']}: {err['message']}" for err in rec.get("errors", [])]
    return lines
