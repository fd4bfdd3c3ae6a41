"""``fedsegnet`` command line: data, eval, infer, report, export, demo, job, poc, ledger.

    fedsegnet data synth --out DIR --sites 2 --cases 12 --size 48 --seed 0
    fedsegnet data baseline --data DIR
    fedsegnet eval --model FL_global_model.pt --data DIR/test [--json]
    fedsegnet infer --model FL_global_model.pt --image SERIES_FOLDER --out seg.nii.gz [--dicom-seg]
    fedsegnet export bundle FL_global_model.pt --out BUNDLE
    fedsegnet demo [--workdir W]
    fedsegnet job set JOB --out DIR num_rounds=3 preset=tiny
    fedsegnet job policy [--create] WORKSPACE/local
    fedsegnet job simulate JOB -w WS -n 2 [--data-root DATA]
    fedsegnet ledger verify RUN [--kits DIR]

Each command group is one module that registers its own sub-parser (:mod:`~fedsegnet.cli.data`,
:mod:`~fedsegnet.cli.evaluate`, :mod:`~fedsegnet.cli.export`, :mod:`~fedsegnet.cli.demo`,
:mod:`~fedsegnet.cli.job`, :mod:`~fedsegnet.cli.poc`, :mod:`~fedsegnet.cli.ledger`). Only this
package prints. Errors of the FedSegNet family (and file-system errors) are shown as one line, and
the exit code says what kind of problem it was:

    0  done
    1  a run itself failed (the simulator or a POC job did not complete, or timed out)
    2  usage: a bad flag, a bad setting (ConfigError) or flags that do not go together
    3  data or files: an input that is missing or broken (DataError), or a refused destination

Anything else keeps its traceback. Nothing is overwritten: a destination that exists is refused
unless ``--overwrite`` is given, and even then only an output fedsegnet wrote is replaced; sources
and input scans are never written (:mod:`fedsegnet.outputs`).

Public API: :func:`main` (the ``fedsegnet`` console script), :func:`build_parser`,
:func:`exit_code` and the ``EXIT_*`` codes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fedsegnet import __version__
from fedsegnet.cli import data, demo, evaluate, export, job, ledger, poc
from fedsegnet.errors import ConfigError, FedSegNetError, RunError, UsageError
from fedsegnet.notices import quiet_gpu_codec_notice

__all__ = ["EXIT_DATA", "EXIT_RUN_FAILED", "EXIT_USAGE", "build_parser", "exit_code", "main"]

EXIT_RUN_FAILED, EXIT_USAGE, EXIT_DATA = 1, 2, 3
EXIT_CODES_HELP = """exit codes:
  0  done
  1  a run failed (simulator, POC job) or timed out
  2  usage: a bad flag or setting, or flags that do not go together
  3  data or files: a missing or broken input, or a refused destination

nothing is overwritten: an existing destination is refused unless --overwrite is given, and even
then only an output fedsegnet wrote is replaced; sources and input scans are never written."""

_COMMAND_GROUPS = (data, evaluate, export, demo, job, poc, ledger)  # the order of `fedsegnet --help`


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default when it has one (and
    does not name it already)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and not any(default is v for v in (None, False, argparse.SUPPRESS)) and "default" not in text.lower()
                and not isinstance(action, argparse._VersionAction)):  # fmt: skip
            text += " (default: %(default)s)"
        return text


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedsegnet`` parser: global flags, and each command group's sub-parser.

    Returns:
        The parser; each command sets ``func`` (``func(args) -> exit code``).
    """
    p = argparse.ArgumentParser(
        prog="fedsegnet", description="Federated 3D segmentation on NVIDIA FLARE", epilog=EXIT_CODES_HELP,
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    p.add_argument("--version", action="version", version=f"fedsegnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in _COMMAND_GROUPS:
        group.register(sub)
    for q in _all_parsers(p):  # sub-parsers are made by each group: give them all the same formatter
        q.formatter_class = _HelpFormatter
    return p


def main(argv=None) -> int:
    """Run one ``fedsegnet`` command.

    Args:
        argv: the arguments after the program name. Defaults to None (``sys.argv[1:]``).

    Returns:
        The exit code (see the module docstring); a bad flag exits 2 through argparse.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `job set/pack JOB --out DIR KEY=VALUE ...`: argparse stops filling `values` at --out; take the rest
    if extra and isinstance(getattr(args, "values", None), list) and all("=" in x and not x.startswith("-") for x in extra):
        args.values += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_gpu_codec_notice()  # MONAI's notice that pydicom's optional GPU decoder is missing
    from fedsegnet.outputs import forget_claims, release_claims, seal_claimed

    forget_claims()  # only this command's own folders are sealed when it succeeds
    try:
        rc = args.func(args)
        if rc == 0:
            seal_claimed()  # the command is done: --overwrite may later replace exactly what it wrote
        return rc
    except FedSegNetError as e:
        release_claims()  # a folder it created and left empty goes again
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except OSError as e:  # a file the command reads or writes (the message names it)
        release_claims()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA


def exit_code(error: FedSegNetError) -> int:
    """The exit code for an error: 2 usage/settings, 1 a failed run, 3 data and files (see the module docstring).

    Args:
        error: the error a command raised.

    Returns:
        ``EXIT_USAGE``, ``EXIT_RUN_FAILED`` or ``EXIT_DATA``.
    """
    if isinstance(error, (ConfigError, UsageError)):
        return EXIT_USAGE
    if isinstance(error, RunError):
        return EXIT_RUN_FAILED
    return EXIT_DATA
