"""``fedsegnet export bundle``: a saved global model as a MONAI bundle (:mod:`fedsegnet.bundle`)."""

from __future__ import annotations

from fedsegnet.cli.args import add_overwrite


def register(sub) -> None:
    """Add the ``export`` command and its sub-commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    export = sub.add_parser("export", help="a saved model in another format").add_subparsers(dest="export_command", required=True)
    b = export.add_parser(
        "bundle", help="a MONAI bundle (configs/inference.json runs it with `python -m monai.bundle run`, as fedsegnet infer)"
    )
    b.add_argument("model", help="a saved global model (FL_global_model.pt)")
    b.add_argument("--out", required=True, help="the bundle folder (made)")
    add_overwrite(b)
    b.set_defaults(func=_cmd_bundle)


def _cmd_bundle(args) -> int:
    from fedsegnet.bundle import prepare_bundle, write_bundle
    from fedsegnet.outputs import claim_dir

    prepared = prepare_bundle(args.model)  # a bad model file is refused before anything is written
    claim_dir(args.out, "export bundle", overwrite=args.overwrite, protect=[args.model])
    summary = write_bundle(prepared, args.out)
    needs = "MONAI, torch, nibabel and fedsegnet" if summary["needs_fedsegnet"] else "MONAI, torch and nibabel (no fedsegnet)"
    print(f"wrote a MONAI bundle of {args.model} ({summary['network']}) to {args.out}: {len(summary['files'])} files; needs {needs}")
    print(f"  run it: cd {args.out} && python -m monai.bundle run --config_file configs/inference.json "
          f"--dataset_dir SCANS --output_dir SEGS")  # fmt: skip
    return 0
