"""The synthetic multi-site dataset: :func:`synthesize` writes site folders and a test set.

The steps: check the arguments, plan every site (style, host, corruptions, orientation, label
kind), write each site's cases and ``dataset.json``, then the shared test set.

Determinism: a case depends only on ``(seed, site index, case index)`` and the arguments (a site's
own test cases on a separate stream, ``(seed, site index, 7357, case index)``; the shared test set
is group 0, ``(seed, 0, case index)``; corruption ``j`` of a case ``(seed, site index, case index,
1000 + j)``), so the same call writes the same arrays and affines (and the same bytes, see
:mod:`fedsegnet.data.synth.writer`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsegnet.data.datalist import write_datalist
from fedsegnet.data.orientation import check_axcodes
from fedsegnet.data.synth.corrupt import CORRUPTION_KINDS, corrupt_label, validate_corruption
from fedsegnet.data.synth.options import parse_corrupt, parse_label_kinds
from fedsegnet.data.synth.organs import HOSTS, make_host_case
from fedsegnet.data.synth.phantom import LABELS, make_case
from fedsegnet.data.synth.styles import site_style
from fedsegnet.data.synth.writer import modality, ras_affine, write_case
from fedsegnet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["SCENARIOS", "synthesize"]

SCENARIOS = ("default", "organs")
"""Scenarios of :func:`synthesize`: ``default`` (one organ type everywhere, a shared test set) and
``organs`` (a different host organ per site, per-site test sets; see
:mod:`fedsegnet.data.synth.organs`)."""

_TEST_GROUP = 0  # rng group of the test set; sites are 1..N
_SITE_TEST_STREAM = 7357  # rng stream of a site's own test cases (organs scenario): [seed, site, 7357, case]


@dataclass(frozen=True)
class _Site:
    """What one site's cases are made and stored with."""

    name: str
    group: int  # rng group: the 1-based site index
    host: str | None  # a HOSTS type in the organs scenario, else None
    style: dict
    corruptions: tuple[tuple[str, float], ...]
    axcodes: tuple[str, str, str]
    label_kind: tuple[str, tuple[int, ...]]  # (kind, annotated class ids)


@dataclass(frozen=True)
class _Volumes:
    """What every case of a call shares: seed, grid, channels, affine, ``dataset.json`` modality."""

    seed: int
    size: int
    channels: int
    affine: np.ndarray
    modality: dict


def _generate(entropy: list[int], n: int, style: dict, channels: int, host: str | None) -> dict:
    """One case from the rng seeded with ``entropy``: the default organ (``host`` None) or a host type."""
    rng = np.random.default_rng(entropy)
    if host is None:
        return make_case(rng, n, style, channels)
    return make_host_case(rng, n, style, channels, host)


def _check_sizes(*, scenario, sites, cases, size, channels, test_cases, site_test_cases, val_fraction, spacing) -> int:
    """Check the scalar arguments of :func:`synthesize`; return the validation cases per site."""
    if not isinstance(scenario, str) or scenario not in SCENARIOS:
        raise ConfigError("scenario", scenario, "unknown scenario", options=SCENARIOS)
    if int(sites) < 1:
        raise ConfigError("sites", sites, "must be >= 1")
    if int(size) < 16:
        raise ConfigError("size", size, "must be >= 16")
    if int(channels) < 1:
        raise ConfigError("channels", channels, "must be >= 1")
    if int(test_cases) < 0:
        raise ConfigError("test_cases", test_cases, "must be >= 0")
    if site_test_cases is not None and int(site_test_cases) < 0:
        raise ConfigError("site_test_cases", site_test_cases, "must be >= 0 (or None: the scenario's default)")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError("val_fraction", val_fraction, "must be in [0, 1)")
    n_val = int(math.floor(int(cases) * float(val_fraction) + 0.5))
    if int(cases) - n_val < 1:
        raise ConfigError(
            "cases", cases, f"too few cases: need at least one training case after {n_val} validation case(s)"
        )
    if not float(spacing) > 0:
        raise ConfigError("spacing", spacing, "must be > 0")
    return n_val


def _site_corruptions(corrupt, site_names: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Site -> ``(kind, amount)`` corruptions, in order, from ``(site, kind, amount)`` items or specs."""
    corruptions: dict[str, list[tuple[str, float]]] = {s: [] for s in site_names}
    for item in corrupt or []:
        if isinstance(item, str):
            item = parse_corrupt(item)
        try:
            site, kind, amount = item
            amount = float(amount)
        except (TypeError, ValueError):
            raise ConfigError("corrupt", item, "expected (site, kind, amount)", options=CORRUPTION_KINDS) from None
        if site not in site_names:
            raise ConfigError("corrupt", item, f"unknown site {site!r}", options=site_names)
        validate_corruption("corrupt", item, kind, amount)
        corruptions[site].append((kind, amount))
    return corruptions


def _plan_sites(
    n_sites: int, *, seed, organs: bool, site_styles, corrupt, orientation, label_kinds, vary_sites
) -> list[_Site]:
    """Resolve every site's host, style, corruptions, orientation and label kind (all checked)."""
    site_names = [f"site-{i}" for i in range(1, n_sites + 1)]
    for arg_name, mapping in (("site_styles", site_styles), ("orientation", orientation)):
        for key in mapping or {}:
            if key not in site_names:
                raise ConfigError(arg_name, key, "unknown site", options=site_names)
    corruptions = _site_corruptions(corrupt, site_names)
    axcodes = {s: check_axcodes((orientation or {}).get(s, "RAS"), "orientation") for s in site_names}
    kinds = parse_label_kinds(label_kinds) if isinstance(label_kinds, str) else dict(label_kinds or {})
    for site in kinds:
        if site not in site_names:
            raise ConfigError("label_kinds", site, "unknown site", options=site_names)
    kinds = {s: tuple(kinds.get(s, ("voxel", ()))) for s in site_names}
    styles = {
        s: site_style(i, seed, (site_styles or {}).get(s), vary=vary_sites) for i, s in enumerate(site_names, start=1)
    }
    return [
        _Site(
            name=s,
            group=i,
            host=HOSTS[(i - 1) % len(HOSTS)] if organs else None,
            style=styles[s],
            corruptions=tuple(corruptions[s]),
            axcodes=axcodes[s],
            label_kind=kinds[s],
        )
        for i, s in enumerate(site_names, start=1)
    ]


def _write_site_cases(folder: Path, site: _Site, vol: _Volumes, cases: int, bar) -> list[dict]:
    """Write a site's training and validation cases (labels corrupted, the site's label kind)."""
    written = []
    for i in range(cases):
        case = _generate([vol.seed, site.group, i], vol.size, site.style, vol.channels, site.host)
        label = case["label"]
        for j, (kind, amount) in enumerate(site.corruptions):
            stream = np.random.SeedSequence([vol.seed, site.group, i, 1000 + j]).generate_state(1)[0]
            label = corrupt_label(label, kind, amount, structures=case["structures"], seed=int(stream))
        stem = f"{site.name}_{i:03d}"
        written.append(write_case(folder, stem, case, label, vol.affine, site.axcodes, *site.label_kind))
        bar.update(1)
    return written


def _write_site_tests(folder: Path, site: _Site, vol: _Volumes, test_cases: int, bar) -> list[dict]:
    """Write a site's own held-out cases (``imagesTs``): clean labels, voxel masks (a partial
    site's annotated classes)."""
    test_kind = site.label_kind if site.label_kind[0] == "partial" else ("voxel", ())
    tests = []
    for i in range(test_cases):
        case = _generate([vol.seed, site.group, _SITE_TEST_STREAM, i], vol.size, site.style, vol.channels, site.host)
        stem = f"{site.name}_test_{i:03d}"
        tests.append(write_case(folder, stem, case, case["label"], vol.affine, site.axcodes, *test_kind, split="Ts"))
        bar.update(1)
    return tests


def _write_site(root: Path, site: _Site, vol: _Volumes, *, cases: int, n_val: int, test_cases: int, bar) -> dict:
    """Write one site folder (cases, own test cases, ``dataset.json``); return its summary entry."""
    folder = root / site.name
    written = _write_site_cases(folder, site, vol, cases, bar)
    train, val = written[: len(written) - n_val], written[len(written) - n_val :]
    tests = _write_site_tests(folder, site, vol, test_cases, bar)
    kind, annotated = site.label_kind
    write_datalist(
        folder,
        labels=LABELS,
        modality=vol.modality,
        training=train,
        validation=val,
        test=tests,
        name=f"FedSegNet synthetic {site.name}" + (f" ({site.host} host)" if site.host else ""),
        label_kind=kind,
        annotated_classes=[LABELS[c] for c in annotated],
    )
    logger.info(
        "synthesized %s%s: %d training + %d validation + %d test cases, style %s",
        site.name, f" ({site.host} host)" if site.host else "", len(train), len(val), len(tests), site.style,
    )  # fmt: skip
    return {
        "dir": str(folder),
        "host": site.host,
        "n_training": len(train),
        "n_validation": len(val),
        "n_test": len(tests),
        "style": site.style,
        "corruptions": [list(c) for c in site.corruptions],
        "orientation": "".join(site.axcodes),
        "label_kind": kind + (":" + "+".join(LABELS[c] for c in annotated) if annotated else ""),
    }


def _write_test_set(root: Path, vol: _Volumes, test_cases: int, bar) -> dict:
    """Write the shared test set ``root/test`` (neutral style, clean voxel labels, RAS); return its summary."""
    folder = root / "test"
    neutral = site_style(_TEST_GROUP, vol.seed, vary=False)
    written = []
    for i in range(test_cases):
        case = _generate([vol.seed, _TEST_GROUP, i], vol.size, neutral, vol.channels, None)
        written.append(write_case(folder, f"test_{i:03d}", case, case["label"], vol.affine, ("R", "A", "S")))
        bar.update(1)
    write_datalist(
        folder,
        labels=LABELS,
        modality=vol.modality,
        training=[],
        validation=written,
        test=written,
        name="FedSegNet synthetic test set",
    )
    return {"dir": str(folder), "n_cases": len(written)}


def synthesize(
    out_dir,
    *,
    sites: int = 2,
    cases: int = 12,
    size: int = 48,
    seed: int = 0,
    channels: int = 1,
    test_cases: int = 8,
    val_fraction: float = 0.25,
    site_styles: dict[str, dict] | None = None,
    corrupt: list[tuple[str, str, float]] | None = None,
    orientation: dict[str, str] | None = None,
    progress: bool = False,
    spacing: float = 1.5,
    vary_sites: bool = True,
    label_kinds: dict | str | None = None,
    scenario: str = "default",
    site_test_cases: int | None = None,
) -> dict:
    """Write synthetic sites ``out_dir/site-1 .. site-N`` and a clean test set ``out_dir/test``.

    Each folder holds ``imagesTr/`` and ``labelsTr/`` NIfTI files (float32 images, uint8 labels
    {0: background, 1: organ, 2: lesion}; affine with ``spacing`` mm voxels and a non-zero origin;
    multi-channel images as one 4D file, channels last, as in MSD) and an MSD ``dataset.json``.
    A site's cases are split into ``training`` and ``validation`` (``cases * val_fraction``
    validation cases, rounded half up, at least one training case). The test folder's
    ``dataset.json`` has an empty ``training`` list and lists its cases under both ``validation``
    and ``test``, so that "evaluate the cases of a folder" and MSD-style test readers both find them.

    Site styles: every site starts from :data:`~fedsegnet.data.synth.styles.STYLE_DEFAULTS`; with
    ``vary_sites`` it gets a mild deterministic variation (ranges in
    :data:`~fedsegnet.data.synth.styles.SITE_VARIATION`, drawn from ``seed`` and the site index);
    keys in ``site_styles[site]`` override both. The test set uses the neutral defaults.
    Corruptions apply to all of a site's labels (training and validation: the site's annotators made
    them); images and the test set are never affected.

    Scenario ``organs`` (personalisation; see :mod:`fedsegnet.data.synth.organs`): site ``i`` scans
    host organ ``HOSTS[(i - 1) % len(HOSTS)]`` (label 1 "organ" is the host, 2 the lesion; styles apply on top
    of the host type), and every site gets its own held-out test set instead of the shared one:
    ``test_cases`` cases in ``site-N/imagesTs`` and ``site-N/labelsTs``, listed (labelled) under
    the ``test`` split of the site's ``dataset.json`` and never under training or validation. They
    come from their own rng stream, show the site's host, style and orientation, and carry clean
    voxel labels (no corruption; box and tag sites get true masks here, for evaluation only, the way
    they may list voxel-labelled validation cases; a partial site keeps its annotated classes). No
    ``out_dir/test`` folder is written in this scenario. ``site_test_cases`` gives the sites of the
    default scenario such a held-out split of their own too (their style, clean labels), next to
    the shared test set.

    Args:
        out_dir: output folder (created).
        sites: number of sites, >= 1. Defaults to 2.
        cases: cases per site, >= 2 when ``val_fraction`` > 0. Defaults to 12.
        size: cube edge in voxels, >= 16. Defaults to 48.
        seed: base seed. Defaults to 0.
        channels: image channels, >= 1. Defaults to 1.
        test_cases: cases in the test set, >= 0 (0: no test folder). Defaults to 8.
        val_fraction: share of a site's cases used for validation, in [0, 1). Defaults to 0.25.
        site_styles: site name -> style overrides (keys of
            :data:`~fedsegnet.data.synth.styles.STYLE_DEFAULTS`). Defaults to None.
        corrupt: ``(site, kind, amount)`` label corruptions (see
            :func:`~fedsegnet.data.synth.corrupt.corrupt_label`; a ``"SITE:KIND:AMOUNT"`` string is
            parsed with :func:`~fedsegnet.data.synth.options.parse_corrupt`), applied in order.
            Defaults to None.
        orientation: site name -> axis codes of the stored volumes (e.g. ``{"site-2": "LPS"}``;
            default RAS). Data and affine are both changed, so reorienting to RAS gives the same
            arrays. Defaults to None.
        progress: show a tqdm progress bar. Defaults to False.
        spacing: voxel size in mm (isotropic). Defaults to 1.5.
        vary_sites: apply the mild default per-site variation. Defaults to True.
        label_kinds: site -> ``(kind, annotated class ids)`` or the string form of
            :func:`~fedsegnet.data.synth.options.parse_label_kinds`
            (``"site-2:box,site-3:tag,site-4:partial:1"``): the site keeps only weaker labels derived
            from its true masks (boxes as world-coordinate JSON sidecars, tags in ``dataset.json``,
            partial label maps), in training and validation alike; its true masks are never written. Defaults to None (every site voxel).
        scenario: one of :data:`SCENARIOS`: ``"default"`` (one organ type, a shared test set) or
            ``"organs"`` (a host type per site, per-site test sets, no shared test set).
            Defaults to ``"default"``.
        site_test_cases: held-out cases in each site's own ``test`` split, >= 0. Defaults to None
            (``test_cases`` in the organs scenario, 0 in the default one).

    Returns:
        Summary: ``{"root", "scenario", "labels", "channels", "size", "spacing", "seed", "sites":
        {site: {"dir", "host", "n_training", "n_validation", "n_test", "style", "corruptions",
        "orientation", "label_kind"}}, "test": {"dir", "n_cases"} or None}``. ``host`` is the
        site's :data:`~fedsegnet.data.synth.organs.HOSTS` type (None in the default scenario),
        ``n_test`` its own test cases (``site_test_cases``); ``test`` is None in the organs
        scenario.

    Raises:
        ConfigError: naming the bad argument (unknown ``scenario``, unknown site in ``site_styles``/
            ``corrupt``/``orientation``, bad style key or value, bad corruption, bad axis codes, bad sizes).
    """
    n_val = _check_sizes(
        scenario=scenario, sites=sites, cases=cases, size=size, channels=channels, test_cases=test_cases,
        site_test_cases=site_test_cases, val_fraction=val_fraction, spacing=spacing,
    )  # fmt: skip
    organs = scenario == "organs"
    own_tests = int(site_test_cases) if site_test_cases is not None else (int(test_cases) if organs else 0)
    plan = _plan_sites(
        int(sites), seed=seed, organs=organs, site_styles=site_styles, corrupt=corrupt, orientation=orientation,
        label_kinds=label_kinds, vary_sites=vary_sites,
    )  # fmt: skip

    root = Path(out_dir).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    n = int(size)
    vol = _Volumes(
        seed=int(seed), size=n, channels=int(channels), affine=ras_affine(n, (float(spacing),) * 3),
        modality=modality(int(channels)),
    )  # fmt: skip
    total = int(sites) * (int(cases) + own_tests) + (0 if organs else int(test_cases))

    from tqdm.auto import tqdm  # local import: only needed here

    summary = {
        "root": str(root),
        "scenario": scenario,
        "labels": dict(LABELS),
        "channels": int(channels),
        "size": n,
        "spacing": float(spacing),
        "seed": int(seed),
        "sites": {},
        "test": None,
    }
    with tqdm(total=total, desc="synthesize", unit="case", disable=not progress) as bar:
        for site in plan:
            summary["sites"][site.name] = _write_site(
                root, site, vol, cases=int(cases), n_val=n_val, test_cases=own_tests, bar=bar
            )
        if int(test_cases) > 0 and not organs:
            summary["test"] = _write_test_set(root, vol, int(test_cases), bar)
    return summary
