"""Arguments shared by several commands: the ``--overwrite`` flag and ``KEY=VALUE`` job args."""

from __future__ import annotations

import argparse

from fedsegnet.config import parse_job_values


def add_overwrite(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """Add ``--overwrite`` to a command's parser.

    Args:
        parser: the command's parser.
        what: what the flag replaces, as the help names it. Defaults to ``"--out"``.
    """
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"replace {what} when fedsegnet wrote it before (an existing one is refused otherwise; "
             "folders fedsegnet did not write and the inputs are never touched)",
    )  # fmt: skip


def parse_values(pairs: list[str]) -> dict:
    """Job args from ``KEY=VALUE`` words: :func:`fedsegnet.config.parse_job_values` (shared with the Recipe)."""
    return parse_job_values(pairs)
