"""Every command-line option says what it does and shows its default; ``fedsegnet --version``."""

from __future__ import annotations

import argparse

import pytest

from fedsegnet import __version__
from fedsegnet.cli import build_parser, main


def _options(parser, path=("fedsegnet",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action, parser


def test_every_option_and_argument_has_help_text():
    missing = [(cmd, a.option_strings or a.dest) for cmd, a, _ in _options(build_parser()) if not (a.help or "").strip()]
    assert not missing, missing


def test_every_option_with_a_default_shows_it():
    unshown = []
    for cmd, action, parser in _options(build_parser()):
        default = action.default
        if not action.option_strings or any(default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        shown = parser._get_formatter()._expand_help(action)  # this option's help line as printed
        if f"(default: {default})" not in shown and "default" not in (action.help or "").lower():
            unshown.append((cmd, action.option_strings, default, shown))
    assert not unshown, unshown


def test_a_zero_default_is_shown(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "random seed of the data (default: 0)" in out and "number of sites (default: 2)" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fedsegnet {__version__}"
