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
