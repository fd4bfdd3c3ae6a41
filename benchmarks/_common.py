"""What the in-process benchmarks share: sizes from a preset table, torch threads and quiet logs,
and a work folder that is kept when named and removed when temporary."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path


def apply_size(args, size: dict) -> None:
    """Fill every argument left at None from ``size`` (``seeds`` parsed from "0,1,2" when given)."""
    for key, value in size.items():
        if key != "seeds" and getattr(args, key, None) is None:
            setattr(args, key, value)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else size["seeds"]


def setup_torch(threads: int) -> None:
    """``torch.set_num_threads(threads)`` unless 0, and library logs at WARNING."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


@contextlib.contextmanager
def work_root(workdir: str | None, prefix: str) -> Iterator[Path]:
    """``workdir`` (created, kept) or a temporary folder removed afterwards, also on error."""
    if workdir:
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def summarize(rows: list[dict], methods) -> list[dict]:
    """One row per method of ``methods`` that has runs: ``{"method", "dice_mean", "dice_sd",
    "hd95_mean", "n_seeds"}`` over the runs' ``dice`` and ``hd95`` (None values left out)."""
    import statistics

    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        d = [r["dice"] for r in mine if r["dice"] is not None]
        h = [r["hd95"] for r in mine if r["hd95"] is not None]
        out.append({
            "method": method, "dice_mean": statistics.fmean(d) if d else None,
            "dice_sd": statistics.stdev(d) if len(d) > 1 else 0.0,
            "hd95_mean": statistics.fmean(h) if h else None, "n_seeds": len(d),
        })  # fmt: skip
    return out


def print_summary(summary: list[dict], title: str, goal_lines: list[str]) -> None:
    """The Dice (x100, mean ± sd) and HD95 table, then the goals."""
    print(f"\n{title}")
    print(f"  {'method':<12}{'Dice':>14}{'HD95 mm':>10}")
    for r in summary:
        hd = "n/a" if r["hd95_mean"] is None else f"{r['hd95_mean']:.2f}"
        dice = "n/a" if r["dice_mean"] is None else f"{100 * r['dice_mean']:>8.1f} ± {100 * r['dice_sd']:<4.1f}"
        print(f"  {r['method']:<12}{dice:>14}{hd:>10}")
    print("\ngoals:")
    for line in goal_lines:
        print("  " + line)


def write_results(path: str | None, args, rows: list[dict], summary: list[dict], goal_lines: list[str]) -> None:
    """Write ``{"args", "rows", "summary", "goals"}`` as JSON to ``path`` (nothing when None)."""
    import json

    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary, "goals": goal_lines},
                                     indent=2, default=str) + "\n")  # fmt: skip
