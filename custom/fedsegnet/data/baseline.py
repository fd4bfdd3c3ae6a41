"""Intensity-threshold baseline: how far a per-class intensity window gets on a dataset.

For every class the best intensity interval ``[low, high)`` (and, for multi-channel images, the
best channel) is fitted on the training cases of the given sites by maximising the pooled
training Dice over all intervals of a histogram; it is then applied to the test cases. Each class
is scored as its own binary problem (voxels in the window vs. voxels of the class), which is an
*optimistic* version of the baseline: no voxel has to choose between overlapping windows.

A segmentation task on which this baseline does well does not need a network; the synthetic data
of :mod:`fedsegnet.data.synth` is built so that it stays well below a Dice of 0.5.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from fedsegnet.data.datalist import load_datalist
from fedsegnet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NORMALIZE_MODES = ("zscore", "none")


def _load_case(case: dict, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Return image (C, N) float32 and label (N,) int of one case, image normalised per channel."""
    paths = case["image"] if isinstance(case["image"], list) else [case["image"]]
    chans = []
    for p in paths:
        data = np.asarray(nib.load(p).dataobj, dtype=np.float32)
        data = data.reshape(data.shape[:3] + (-1,))
        chans.extend(np.moveaxis(data, -1, 0))
    image = np.stack(chans).reshape(len(chans), -1)
    if normalize == "zscore":
        mean = image.mean(axis=1, keepdims=True)
        sd = image.std(axis=1, keepdims=True)
        image = (image - mean) / np.maximum(sd, 1e-8)
    label = np.rint(np.asarray(nib.load(case["label"]).dataobj)).astype(np.int64).reshape(-1)
    if label.size != image.shape[1]:
        raise DataError("threshold_baseline", [f"{case['label']}: label shape differs from image {paths[0]}"])
    return image, label


def _best_interval(hist_class: np.ndarray, hist_all: np.ndarray) -> tuple[float, int, int]:
    """Best Dice over all bin intervals [i, j]; histograms have shape (B,)."""
    cc = np.concatenate([[0.0], np.cumsum(hist_class)])
    ca = np.concatenate([[0.0], np.cumsum(hist_all)])
    tp = cc[None, 1:] - cc[:-1, None]  # [i, j] -> bins i..j
    pred = ca[None, 1:] - ca[:-1, None]
    dice = np.where(np.triu(np.ones_like(tp, dtype=bool)), 2 * tp / np.maximum(pred + cc[-1], 1e-12), -1.0)
    i, j = np.unravel_index(int(np.argmax(dice)), dice.shape)
    return float(dice[i, j]), int(i), int(j)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return float(2.0 * np.logical_and(pred, truth).sum() / denom) if denom else float("nan")


def threshold_baseline(train_dirs: list, test_dir, *, normalize: str = "zscore", bins: int = 256) -> dict:
    """Fit one intensity window per class on the training cases, score it on the test cases.

    Args:
        train_dirs: site folders (each with a ``dataset.json``) whose ``training`` cases are used
            for fitting.
        test_dir: folder whose cases (``validation`` and ``test`` splits, deduplicated) are scored.
        normalize: per-case intensity normalisation before thresholding: ``zscore`` (per channel,
            the same as the networks see) or ``none``. Defaults to ``"zscore"``.
        bins: histogram bins spanning the 0.1-99.9 % range of the training intensities, >= 8.
            Defaults to 256.

    Returns:
        ``{"dice": {class name: mean test Dice}, "mean_dice": float (mean over foreground classes),
        "train_dice": {class name: pooled training Dice}, "intervals": {class name: {"channel",
        "low", "high"}}, "n_train_cases": int, "n_test_cases": int, "normalize": str}``. A class's
        test Dice averages the cases where the class is present.

    Raises:
        ConfigError: for a bad ``normalize`` or ``bins``, or no cases to fit or score.
        DataError: when a datalist is invalid.
    """
    if normalize not in NORMALIZE_MODES:
        raise ConfigError("normalize", normalize, "unknown mode", options=NORMALIZE_MODES)
    if int(bins) < 8:
        raise ConfigError("bins", bins, "must be >= 8")
    train_cases = [c for d in train_dirs for c in load_datalist(d).training]
    test_list = load_datalist(test_dir)
    labels = test_list.labels
    seen, test_cases = set(), []
    for c in test_list.validation + test_list.test + test_list.training:
        if c["label"] not in seen:
            seen.add(c["label"])
            test_cases.append(c)
    if not train_cases:
        raise ConfigError("train_dirs", [str(d) for d in train_dirs], "no training cases to fit on")
    if not test_cases:
        raise ConfigError("test_dir", str(test_dir), "no labelled cases to score")

    train = [_load_case(c, normalize) for c in train_cases]
    n_ch = train[0][0].shape[0]
    lo = np.array([min(np.percentile(img[ch], 0.1) for img, _ in train) for ch in range(n_ch)])
    hi = np.array([max(np.percentile(img[ch], 99.9) for img, _ in train) for ch in range(n_ch)])
    edges = [np.linspace(lo[ch], hi[ch], int(bins) + 1) for ch in range(n_ch)]
    fg_classes = [k for k in sorted(labels) if k > 0]
    hist_all = np.zeros((n_ch, int(bins)))
    hist_cls = np.zeros((len(fg_classes), n_ch, int(bins)))
    for img, lab in train:
        for ch in range(n_ch):
            idx = np.clip(np.searchsorted(edges[ch], img[ch], side="right") - 1, 0, int(bins) - 1)
            hist_all[ch] += np.bincount(idx, minlength=int(bins))
            for k, cls in enumerate(fg_classes):
                hist_cls[k, ch] += np.bincount(idx[lab == cls], minlength=int(bins))

    intervals, train_dice = {}, {}
    for k, cls in enumerate(fg_classes):
        best = max(((*_best_interval(hist_cls[k, ch], hist_all[ch]), ch) for ch in range(n_ch)), key=lambda t: t[0])
        score, i, j, ch = best
        # open the window at the histogram ends so that clipped tails are included
        low = -np.inf if i == 0 else float(edges[ch][i])
        high = np.inf if j == int(bins) - 1 else float(edges[ch][j + 1])
        intervals[labels[cls]] = {"channel": ch, "low": low, "high": high}
        train_dice[labels[cls]] = score

    per_class: dict[str, list[float]] = {labels[c]: [] for c in fg_classes}
    for case in test_cases:
        img, lab = _load_case(case, normalize)
        for cls in fg_classes:
            truth = lab == cls
            if not truth.any():
                continue
            win = intervals[labels[cls]]
            x = img[win["channel"]]
            per_class[labels[cls]].append(_dice((x >= win["low"]) & (x < win["high"]), truth))
    dice = {name: float(np.mean(v)) if v else float("nan") for name, v in per_class.items()}
    valid = [v for v in dice.values() if np.isfinite(v)]
    result = {
        "dice": dice,
        "mean_dice": float(np.mean(valid)) if valid else float("nan"),
        "train_dice": train_dice,
        "intervals": intervals,
        "n_train_cases": len(train_cases),
        "n_test_cases": len(test_cases),
        "normalize": normalize,
    }
    logger.info("threshold baseline: mean foreground Dice %.3f (%s)", result["mean_dice"], dice)
    return result
