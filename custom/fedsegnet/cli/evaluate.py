"""``fedsegnet eval | infer | report``: use a saved model (held-out Dice/HD95, segmentations) and report a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedsegnet.cli.args import add_overwrite
from fedsegnet.cli.display import print_eval_table
from fedsegnet.errors import DataError, FedSegNetError, UsageError


def register(sub) -> None:
    """Add the ``eval``, ``infer`` and ``report`` commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    e = sub.add_parser("eval", help="evaluate a saved global model on a dataset.json folder")
    e.add_argument("--model", help="a saved model file (FL_global_model.pt); or give --site-choice")
    e.add_argument("--data", required=True, help="a dataset.json folder (e.g. the held-out test/ folder)")
    e.add_argument("--split", choices=("test", "validation", "training"), help="which list of dataset.json (default: test, else validation)")
    e.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    e.add_argument("--personal", metavar="SITE_STATE",
                   help="a site's personal state (<site job workspace>/fedsegnet_personal/<site>.pt): evaluate that site's personalised model")
    _add_site_choice(e)
    e.set_defaults(func=_cmd_eval)

    i = sub.add_parser("infer", help="segment NIfTI image(s) or a DICOM series with a saved model; output on the input's grid")
    i.add_argument("--model", help="a saved global model (FL_global_model.pt); or give --site-choice")
    i.add_argument("--image", nargs="+",
                   help="one case: one NIfTI file per channel, in training order, or one DICOM series folder per channel")
    i.add_argument("--image-dir", help="every case in a folder (several channels: <case>_0000.nii.gz, <case>_0001...)")
    i.add_argument("--out", required=True, help="output file (--image) or folder (--image-dir)")
    i.add_argument("--preset", help="check that the model was trained with this preset")
    i.add_argument("--device", help="torch device (default: cuda when available)")
    i.add_argument("--personal", metavar="SITE_STATE", help="a site's personal state: segment with that site's personalised model")
    i.add_argument("--dicom-seg", action="store_true",
                   help="with --image SERIES_FOLDER: also write a DICOM SEG referencing the series, next to --out "
                        "(seg.nii.gz -> seg.dcm)")
    _add_site_choice(i)
    add_overwrite(i, "--out (and the DICOM SEG)")
    i.set_defaults(func=_cmd_infer)

    r = sub.add_parser("report", help="figures + HTML page from a simulator workspace or a downloaded job result")
    r.add_argument("run", help="simulator workspace, downloaded job result, or server job folder")
    r.add_argument("--out", required=True, help="new folder for index.html, the figures and report.json")
    r.add_argument("--data", help="held-out test folder (dataset.json): per-class table and slices of a test case")
    r.add_argument("--device", help="torch device for --data (default: cuda when available)")
    add_overwrite(r)
    r.set_defaults(func=_cmd_report)


def _add_site_choice(q) -> None:
    q.add_argument("--site-choice", metavar="SITE_JOB_DIR",
                   help="use the model a site chose at the end of a job (its job folder <site workspace>/<job id>, "
                        "or its fedsegnet_choice folder): the best of global, personalised and local on its validation split")  # fmt: skip
    q.add_argument("--choice-of", default="final", help="the server model that choice was made from: final or best (default: final)")


def _model_of(args) -> None:
    """Set ``args.model`` from ``--site-choice`` (exactly one of the two), and say which model it is."""
    if bool(args.model) == bool(args.site_choice):
        raise UsageError("give exactly one of --model and --site-choice")
    if args.site_choice:
        if getattr(args, "personal", None):
            raise UsageError("--site-choice already is the site's model; leave out --personal")
        from fedsegnet.training.choice import chosen_model

        path, info = chosen_model(args.site_choice, args.choice_of)
        scores = ", ".join(f"{k} {v:.3f}" for k, v in info["val_dice"].items() if v is not None)
        print(f"{info['site']} keeps its '{info['chosen']}' model of {info['owner']} (validation Dice: {scores or 'none'}): {path}",
              file=sys.stderr)  # fmt: skip
        args.model = str(path)


def _cmd_eval(args) -> int:
    from fedsegnet.training.evaluate_file import evaluate_model_file

    _model_of(args)
    result, spec = evaluate_model_file(args.model, args.data, split=args.split, progress=sys.stderr.isatty(),
                                       personal=args.personal)  # fmt: skip
    summary = result.to_dict()
    if args.json:
        keys = ("dice_mean", "hd95_mean", "per_class", "n_cases", "per_region", "region_dice_mean")
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
    else:
        title = f"{args.model} on {args.data} ({spec['network']}, preset {spec['preset']})"
        if "personal" in spec:
            p = spec["personal"]
            title += f", personalised for {p['site']} ({p['method']}, round {p['round']}: {args.personal})"
        print_eval_table(summary, title)
    return 0


def _cmd_infer(args) -> int:
    import numpy as np

    from fedsegnet.training.spec import class_names_of, load_model_file
    from fedsegnet.training.infer import check_output_file, infer_folder, predict_case, save_labels
    from fedsegnet.training.site import pick_device

    _model_of(args)
    if bool(args.image) == bool(args.image_dir):
        raise UsageError("give either --image FILE [FILE ...] (one case) or --image-dir DIR (every case in it)")
    folders = [p for p in args.image or () if Path(p).is_dir()]
    if folders and len(folders) != len(args.image):
        raise UsageError("--image: give NIfTI files or DICOM series folders (one per channel), not both")
    if args.dicom_seg and not folders:
        raise UsageError("--dicom-seg needs --image SERIES_FOLDER: a DICOM SEG references the DICOM series it segments")
    device = pick_device(args.device, "--device")
    series = _read_dicom_inputs(folders, for_seg=args.dicom_seg) if folders else None
    if args.image:
        check_output_file(args.out, args.image, overwrite=args.overwrite)
        if args.dicom_seg:
            from fedsegnet.data.dicom import check_seg_output, seg_path_for

            check_seg_output(seg_path_for(args.out), protect=folders, overwrite=args.overwrite)
    elif not Path(args.image_dir).is_dir():
        raise FedSegNetError(f"--image-dir {args.image_dir}: no such folder")
    model, spec = load_model_file(args.model)
    if args.personal:
        from fedsegnet.training.personal import apply_personal_state

        state = apply_personal_state(model, args.personal)
        print(f"personalised for {state['site']} ({state['method']}, round {state['round']}): {args.personal}")
    if args.preset and args.preset != spec.get("preset"):
        raise UsageError(
            f"--preset {args.preset!r} does not match the model {args.model}: it was trained with preset "
            f"{spec.get('preset')!r} (network {spec.get('network')!r}); leave --preset out to use the model's own"
        )
    if series is not None:
        return _infer_dicom(model, spec, series, args, device)
    if args.image:
        labels, ref = predict_case(model, spec, args.image, device=device)
        out = save_labels(labels, ref, args.out)
        names = dict(zip(spec.get("label_values") or range(spec["num_classes"]), class_names_of(spec)))
        counts = ", ".join(f"{v} {names.get(int(v), '?')}: {int(n)}" for v, n in zip(*np.unique(labels, return_counts=True)))
        print(f"wrote {out} (shape {labels.shape}; voxels per label value: {counts})")
        return 0
    from tqdm import tqdm

    written = infer_folder(model, spec, args.image_dir, args.out, device=device, overwrite=args.overwrite,
                           progress=lambda xs: tqdm(xs, desc="cases", unit="case"))  # fmt: skip
    print(f"wrote {len(written)} segmentation(s) to {args.out}")
    return 0


def _read_dicom_inputs(folders: list[str], for_seg: bool) -> list:
    """Check the DICOM series given as ``--image`` (headers only, before any work): each readable, all
    on one grid, and (``for_seg``) the first one fit to be a SEG's source."""
    from fedsegnet.data.dicom import check_seg_source, read_series, same_grid_problems

    series = [read_series(f) for f in folders]
    problems = same_grid_problems(series)
    if problems:
        raise DataError(str(series[0].folder), problems)
    if for_seg:
        check_seg_source(series[0])
    return series


def _infer_dicom(model, spec: dict, series: list, args, device) -> int:
    """Segment a case given as DICOM series (one per channel): each series' volume goes through the
    same NIfTI path as a NIfTI input (written to a temporary folder), so the label map on the
    series' grid equals that of the same volume given as NIfTI; with ``--dicom-seg`` the SEG is made
    in memory before either file is written."""
    import hashlib
    import tempfile

    import numpy as np

    import fedsegnet
    from fedsegnet.data.dicom import build_seg, save_series_nifti, seg_path_for
    from fedsegnet.training.infer import predict_case, save_labels
    from fedsegnet.training.spec import class_names_of

    if len(series) != int(spec["in_channels"]):
        raise FedSegNetError(
            f"the model takes {spec['in_channels']} input channel(s) but {len(series)} DICOM series were given "
            f"({', '.join(str(s.folder) for s in series)}); pass one series folder per channel, in the training order"
        )
    with tempfile.TemporaryDirectory(prefix="fedsegnet-dicom-") as tmp:
        files = [save_series_nifti(s, Path(tmp) / f"channel_{c:04d}.nii") for c, s in enumerate(series)]
        labels, ref = predict_case(model, spec, files, device=device)
        seg = None
        if args.dicom_seg:
            digest = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
            seg = build_seg(
                labels, series[0], class_names_of(spec), spec.get("label_values") or (),
                software_version=fedsegnet.__version__, device_serial_number=digest[:16],
                description=f"FedSegNet {spec['network']} ({spec.get('preset')})",
            )  # fmt: skip
        out = save_labels(labels, ref, args.out)
    print(f"wrote {out} (shape {labels.shape}, on the grid of {series[0].folder}: {len(series[0].files)} slices)")
    if seg is not None:
        path = seg_path_for(args.out)
        seg.save_as(path)
        present = [int(v) for v in np.unique(labels) if v]
        print(f"wrote {path} (DICOM SEG of series {series[0].series_instance_uid}: {len(seg.SegmentSequence)} segment(s), "
              f"{len(present)} present, {int(seg.NumberOfFrames)} frame(s))")  # fmt: skip
    return 0


def _cmd_report(args) -> int:
    from fedsegnet.outputs import claim_dir
    from fedsegnet.report import build_report, find_run
    from fedsegnet.training.site import pick_device

    if args.device:
        pick_device(args.device, "--device")
    find_run(args.run)  # a run folder without records is refused before anything is written
    claim_dir(args.out, "report", overwrite=args.overwrite, protect=[args.run] + ([args.data] if args.data else []))
    page = build_report(args.run, args.out, data_dir=args.data, device=args.device)
    print(f"report written to {page} (figures and report.json beside it)")
    return 0
