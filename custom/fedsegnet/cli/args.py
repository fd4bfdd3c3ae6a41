"""Arguments shared by several commands: the ``--overwrite`` flag and ``KEY=VALUE`` job args."""

from __future__ import annotations

import argparse
import json

from fedsegnet.errors import UsageError


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
    """Job args from ``KEY=VALUE`` words; a value is read as JSON when it parses, else kept as text.

    Args:
        pairs: the words, e.g. ``["num_rounds=3", "preset=tiny"]``.

    Returns:
        The job args by name, e.g. ``{"num_rounds": 3, "preset": "tiny"}``.

    Raises:
        UsageError: a word without ``=``; names the word.
    """
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UsageError(f"job arg {pair!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values
