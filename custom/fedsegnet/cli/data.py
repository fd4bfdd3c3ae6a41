"""``fedsegnet data synth | split | baseline``: write synthetic sites, split a dataset into sites, a threshold baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedsegnet.cli.args import add_overwrite
from fedsegnet.errors import FedSegNetError, UsageError


def register(sub) -> None:
    """Add the ``data`` command and its sub-commands.

    Args:
        sub: the top-level sub-parsers (``add_subparsers()`` of the ``fedsegnet`` parser).
    """
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write synthetic multi-site NIfTI data")
    s.add_argument("--out", required=True, help="new folder for the site folders (site-1/, ...) and test/")
    s.add_argument("--sites", type=int, default=2, help="number of sites")
    s.add_argument("--cases", type=int, default=12, help="cases per site (training + validation)")
    s.add_argument("--size", type=int, default=48, help="volume edge in voxels")
    s.add_argument("--seed", type=int, default=0, help="random seed of the data")
    s.add_argument("--channels", type=int, default=1, help="image channels (e.g. 4 like BraTS)")
    s.add_argument("--test-cases", type=int, default=8, help="cases of the held-out test/ folder (no site trains on them)")
    s.add_argument("--style", action="append", help="per-site knob SITE:KEY:VALUE, e.g. site-2:intensity_scale:1.3")
    s.add_argument("--corrupt", action="append", help="label corruption SITE:KIND:AMOUNT, e.g. site-3:label_noise:0.5")
    s.add_argument("--orientation", action="append", help="store a site in other axes, e.g. site-2:LPS")
    s.add_argument("--label-kind", help="weaker labels per site, e.g. site-2:box,site-3:tag,site-4:partial:1 (true masks not written)")
    s.add_argument("--scenario", choices=("default", "organs"), default="default", help="organs: a different host organ per site, per-site test sets")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_overwrite(s)
    s.set_defaults(func=_cmd_synth)
    sp = data.add_parser("split", help="per-site datalists from a dataset folder (MSD, nnU-Net v2, ACDC, BraTS, image/label pairs); no copying")
    sp.add_argument("dataset", help="the dataset folder (read only; nothing is copied)")
    sp.add_argument("--out", required=True, help="new folder for one datalist folder per site and test/")
    sp.add_argument("--layout", choices=("auto", "msd", "nnunet", "acdc", "brats", "pairs"), default="auto",
                    help="how the dataset is laid out (auto: detected)")
    sp.add_argument("--scheme", choices=("iid", "dirichlet", "by"), default="iid",
                    help="iid: equal random shares; dirichlet: unequal sizes; by: a metadata column or file-name pattern names the site")
    sp.add_argument("--sites", type=int, default=2, help="number of sites (iid, dirichlet)")
    sp.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more unequal sizes)")
    sp.add_argument("--by-column", help="metadata column whose values are the sites (e.g. ACDC's Group)")
    sp.add_argument("--by-pattern", help="regex with (?P<site>...) on file names (e.g. '^(?P<site>[A-Z]+)_')")
    sp.add_argument("--test-fraction", type=float, default=0.2, help="share of the cases held out in test/")
    sp.add_argument("--val-fraction", type=float, default=0.2, help="share of each site's cases in its validation split")
    sp.add_argument("--labels", help="class names for the pairs layout, or the values of an nnU-Net region-based dataset, e.g. 0:background,1:liver,2:tumour")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the split")
    add_overwrite(sp)
    sp.set_defaults(func=_cmd_split)
    b = data.add_parser("baseline", help="Dice of a per-class intensity-threshold baseline")
    b.add_argument("--data", required=True, help="folder with site-*/ and test/")
    b.set_defaults(func=_cmd_baseline)


def _cmd_synth(args) -> int:
    from fedsegnet.data.synth import parse_corrupt, parse_site_style, synthesize
    from fedsegnet.outputs import claim_dir

    styles: dict[str, dict] = {}
    for spec in args.style or []:
        site, key, value = parse_site_style(spec)
        styles.setdefault(site, {})[key] = value
    corrupt = [parse_corrupt(spec) for spec in args.corrupt or []]
    orientation = {}
    for spec in args.orientation or []:
        site, _, codes = spec.partition(":")
        orientation[site] = codes
    claim_dir(args.out, "data synth", overwrite=args.overwrite)
    summary = synthesize(
        args.out,
        sites=args.sites,
        cases=args.cases,
        size=args.size,
        seed=args.seed,
        channels=args.channels,
        test_cases=args.test_cases,
        site_styles=styles or None,
        corrupt=corrupt or None,
        orientation=orientation or None,
        progress=sys.stderr.isatty(),
        label_kinds=args.label_kind or None,
        scenario=args.scenario,
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        test = "per-site test sets" if args.scenario == "organs" else "test set"
        print(f"wrote {args.sites} site(s) + {test} to {Path(args.out).resolve()}")
        for site, info in summary["sites"].items():
            if info["host"]:
                print(f"  {site}: {info['host']} host, {info['n_test']} test case(s)")
            if info["label_kind"] != "voxel":
                print(f"  {site}: {info['label_kind']} labels only")
    return 0


def _cmd_split(args) -> int:
    from tqdm import tqdm

    from fedsegnet.data.split import read_dataset, split_cases, write_split
    from fedsegnet.outputs import claim_dir

    labels = None
    if args.labels:
        labels = {}
        for item in args.labels.split(","):
            key, sep, name = item.partition(":")
            if not sep or not key.strip().isdigit():
                raise UsageError(f"--labels {args.labels!r}: expected ID:NAME,ID:NAME (e.g. 0:background,1:liver)")
            labels[int(key)] = name.strip()
    source = read_dataset(args.dataset, args.layout, labels, progress=lambda xs: tqdm(xs, desc="reading labels", unit="file"))
    assignment, test = split_cases(
        source.cases, sites=args.sites, scheme=args.scheme, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, alpha=args.alpha, by_column=args.by_column, by_pattern=args.by_pattern,
        seed=args.seed,
    )  # fmt: skip
    claim_dir(args.out, "data split", overwrite=args.overwrite, protect=[args.dataset])
    summary = write_split(source, assignment, test, args.out)
    print(f"{source.name} ({source.layout}, {len(source.cases)} cases) -> {args.out}")
    for site, s in summary["sites"].items():
        print(f"  {site:<16} {s['training']:>4} training {s['validation']:>4} validation")
    print(f"  {'test':<16} {summary['test']:>4} held out (never given to a site)")
    return 0


def _cmd_baseline(args) -> int:
    from fedsegnet.data.baseline import threshold_baseline

    root = Path(args.data)
    if not root.is_dir():
        raise FedSegNetError(f"--data {args.data}: no such folder")
    sites = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "test")
    if not sites or not (root / "test").is_dir():
        raise FedSegNetError(f"--data {args.data}: expected site folders and test/ (as `fedsegnet data synth` writes)")
    result = threshold_baseline(sites, root / "test")
    print(json.dumps(result, indent=2, default=str))
    return 0
