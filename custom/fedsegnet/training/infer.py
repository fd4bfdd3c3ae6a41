"""Inference: NIfTI image(s) in, a label NIfTI out on the input's own voxel grid.

The image goes through the model's evaluation preprocessing (reorient to RAS, resample to the
model's spacing, normalise; :func:`fedsegnet.data.transforms.eval_transforms`), MONAI's
sliding-window inference with the training patch size and an argmax; then every voxel of the input
grid takes the label of the model-grid voxel its centre falls in (nearest neighbour through the two
affines, ties to the higher index, outside = background), so the written label has the input's
shape, orientation and affine whatever axes the input was stored in (RAS, LPS, ...). Mapping
through the affines needs only the model grid's affine (kept by MONAI's ``MetaTensor``), works one
slice at a time, and states its tie rule, which makes RAS- and LPS-stored copies of a scan agree
voxel for voxel (tested). The channels of one case (multi-sequence MRI) come as several 3D files in
the order the model was trained, or as one 4D file with the channels last (MSD Task01_BrainTumour).
The written values are the model spec's ``label_values`` (BraTS: 0, 1, 2, 4), else the class ids.

Nothing is overwritten: an output file or folder that exists is refused unless asked, and even
then only a label map this module wrote (its NIfTI header's ``descrip`` is :data:`DESCRIP`) or a
folder it made is replaced; input scans are never written (:mod:`fedsegnet.outputs`). A header
declaring more than :data:`fedsegnet.data.preflight.MAX_VOXELS` voxels is refused before any data
is read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference

from fedsegnet.data.preflight import check_voxel_bound
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.outputs import claim_dir, claim_file

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DESCRIP = b"fedsegnet infer"
"""What a written label map's NIfTI ``descrip`` field says (how ``overwrite`` recognises its own files)."""
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _open(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        img.shape  # noqa: B018 (a broken header fails here)
    except Exception as e:  # nibabel raises several kinds for a missing or broken file
        raise FedSegNetError(f"{path}: cannot be read as NIfTI: {e}") from None
    check_voxel_bound(path, img.shape)
    return img


def check_inputs(images: Sequence[str | Path], in_channels: int) -> list[nib.Nifti1Image]:
    """Open the channel files of one case and check them against the model.

    Args:
        images: one 3D NIfTI file per channel, or one 4D file holding all channels (last axis).
        in_channels: channels the model expects.

    Returns:
        The opened images (headers read; data not loaded).

    Raises:
        FedSegNetError: wrong number of channels, an unreadable file, a file that is neither a 3D
            volume nor (alone) a 4D one with the model's channels, or channels whose shapes or
            affines differ; each message names the file(s).
    """
    paths = [Path(p) for p in images]
    if not paths:
        raise FedSegNetError("no image file given")
    if len(paths) == 1:
        img = _open(paths[0])
        shape = img.shape
        channels = 1 if len(shape) == 3 else int(np.prod(shape[3:]))
        if len(shape) not in (3, 4) or channels != int(in_channels):
            raise FedSegNetError(
                f"{paths[0]}: shape {tuple(shape)} gives {channels} channel(s) but the model takes {in_channels}; "
                f"pass one 3D file per channel, in the training order, or one 4D file with the channels last"
            )
        return [img]
    if len(paths) != int(in_channels):
        raise FedSegNetError(
            f"the model takes {in_channels} input channel(s) but {len(paths)} image file(s) were given "
            f"({', '.join(str(p) for p in paths)}); pass one file per channel, in the training order"
        )
    opened = []
    for path in paths:
        img = _open(path)
        shape = img.shape
        if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
            raise FedSegNetError(f"{path}: expected a 3D volume (one channel of {len(paths)}), got shape {tuple(shape)}")
        opened.append(img)
    first = opened[0]
    for path, img in zip(paths[1:], opened[1:]):
        if img.shape[:3] != first.shape[:3]:
            raise FedSegNetError(f"{path}: shape {img.shape[:3]} differs from {paths[0]} {first.shape[:3]}")
        if not np.allclose(img.affine, first.affine, atol=1e-4):
            raise FedSegNetError(f"{path}: affine differs from {paths[0]} (channels must share one voxel grid)")
    return opened


def predict_case(
    model: torch.nn.Module,
    spec: dict,
    images: Sequence[str | Path],
    *,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 4,
    overlap: float = 0.25,
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Segment one case.

    Args:
        model: the trained network (``fedsegnet.training.spec.load_model_file``).
        spec: its model spec (channels, classes, patch size, spacing, intensity).
        images: one NIfTI file per channel.
        device: where inference runs. Defaults to ``"cpu"``.
        sw_batch_size: windows per forward pass. Defaults to 4.
        overlap: sliding-window overlap in [0, 1). Defaults to 0.25.

    Returns:
        ``(labels, reference)``: labels ``(X, Y, Z)`` uint8 on the grid of the first input file
        (the spec's ``label_values`` when it has them, else class ids), and that file's opened
        image (for its affine and header).

    Raises:
        FedSegNetError: see :func:`check_inputs`.
    """
    from fedsegnet.data.transforms import eval_transforms
    from fedsegnet.training.spec import preset_from_spec

    opened = check_inputs(images, spec["in_channels"])
    preset = preset_from_spec(spec)
    transforms = eval_transforms(preset)
    files = [str(p) for p in images]
    item = transforms({"image": files if len(files) > 1 else files[0]})
    image = item["image"]
    if image.shape[0] != spec["in_channels"]:
        raise FedSegNetError(f"{files[0]}: loaded {image.shape[0]} channel(s), the model takes {spec['in_channels']}")
    device = torch.device(device)
    model = model.to(device).eval()
    with torch.no_grad():
        logits = sliding_window_inference(
            image.unsqueeze(0).to(device), roi_size=tuple(spec["patch_size"]), sw_batch_size=sw_batch_size,
            predictor=model, overlap=overlap,
        )  # fmt: skip
    pred = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()  # (X, Y, Z) on the model's grid
    model_affine = np.asarray(image.affine, dtype=np.float64)
    reference = opened[0]
    labels = to_input_grid(pred, model_affine, reference.affine, reference.shape[:3])
    values = spec.get("label_values") or []
    if values:
        labels = np.asarray(values, dtype=np.uint8)[labels]
    return labels, reference


def to_input_grid(pred: np.ndarray, model_affine: np.ndarray, input_affine: np.ndarray, input_shape) -> np.ndarray:
    """Labels on the input grid: each input voxel centre mapped through the affines into ``pred``.

    Args:
        pred: labels ``(X, Y, Z)`` on the model's grid.
        model_affine: voxel -> world (RAS mm) of the model's grid, 4x4.
        input_affine: voxel -> world of the input image, 4x4.
        input_shape: the input's 3 spatial sizes.

    Returns:
        uint8 labels of shape ``input_shape``; voxels outside the model's grid are 0. Computed one
        slice at a time (memory of one slice of coordinates).
    """
    mapping = np.linalg.inv(np.asarray(model_affine, dtype=np.float64)) @ np.asarray(input_affine, dtype=np.float64)
    nx, ny, nz = (int(v) for v in input_shape)
    ii, jj = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64), indexing="ij")
    out = np.zeros((nx, ny, nz), dtype=np.uint8)
    bounds = np.asarray(pred.shape)
    for k in range(nz):
        coords = [mapping[r, 0] * ii + mapping[r, 1] * jj + mapping[r, 2] * k + mapping[r, 3] for r in range(3)]
        idx = [np.floor(c + 0.5 + 1e-6).astype(np.int64) for c in coords]  # nearest; ties (x.5) go up
        inside = np.ones((nx, ny), dtype=bool)
        for d in range(3):
            inside &= (idx[d] >= 0) & (idx[d] < bounds[d])
        out[:, :, k][inside] = pred[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out


def written_by_infer(path: str | Path) -> bool:
    """Whether ``path`` is a label map this module wrote (its header's ``descrip`` is :data:`DESCRIP`)."""
    try:
        descrip = bytes(np.asarray(nib.load(str(path)).header["descrip"]).tobytes()).rstrip(b"\0")
    except Exception:  # not a NIfTI file: not ours
        return False
    return descrip == DESCRIP


def check_output_file(out: str | Path, images: Sequence[str | Path] = (), overwrite: bool = False) -> Path:
    """Claim ``out`` for one case's label map before any work is done.

    Args:
        out: the output file (``.nii.gz`` or ``.nii``).
        images: the case's input files (never written). Defaults to ().
        overwrite: replace ``out`` when it is a label map this module wrote. Defaults to False.

    Returns:
        ``out`` as a Path (its folder exists and is writable).

    Raises:
        ConfigError: ``out`` does not end in ``.nii.gz`` or ``.nii``.
        OutputError: ``out`` is an input, exists (and is not ours, or ``overwrite`` is not given),
            or cannot be written.
    """
    if not str(out).endswith(NIFTI_SUFFIXES):
        raise ConfigError("--out", str(out), "a label map is written as NIfTI: the name must end in .nii.gz or .nii")
    return claim_file(out, overwrite=overwrite, owned=written_by_infer, protect=list(images))


def check_output_dir(out_dir: str | Path, folder: str | Path, overwrite: bool = False) -> Path:
    """Claim ``out_dir`` for the label maps of every case of ``folder``.

    Args:
        out_dir: the output folder (created, with :data:`fedsegnet.outputs.MARKER`).
        folder: the input folder (never written; ``out_dir`` may lie inside it).
        overwrite: replace ``out_dir`` when an earlier ``infer`` made it. Defaults to False.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FedSegNetError: ``folder`` is not a folder.
        OutputError: ``out_dir`` is ``folder`` or holds it, exists (and is not ours, or
            ``overwrite`` is not given), or cannot be created.
    """
    if not Path(folder).is_dir():
        raise FedSegNetError(f"--image-dir {folder}: no such folder")
    return claim_dir(out_dir, "infer", overwrite=overwrite, protect=[folder])


def save_labels(labels: np.ndarray, reference: nib.Nifti1Image, out: str | Path) -> Path:
    """Write ``labels`` with the reference image's affine and header (uint8, scaling removed, ``descrip``
    set to :data:`DESCRIP`). The caller has claimed ``out`` (:func:`check_output_file`)."""
    out = Path(out)
    if not str(out).endswith(NIFTI_SUFFIXES):
        raise ConfigError("out", str(out), "a label map is written as NIfTI: the name must end in .nii.gz or .nii")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header["descrip"] = DESCRIP
    img = nib.Nifti1Image(labels.astype(np.uint8), reference.affine, header)
    img.set_qform(reference.get_qform(), int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), int(reference.header["sform_code"]))
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    nib.save(img, str(out))
    return out


def cases_in_folder(folder: str | Path, in_channels: int) -> dict[str, list[Path]]:
    """Group the NIfTI files of a folder into cases.

    With one channel every file is a case. With several, files are grouped by the nnU-Net naming
    ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... (channel order = the number); a file
    without that suffix is a case when it is 4D with the model's channels last (MSD).

    Raises:
        FedSegNetError: no such folder, no NIfTI file, or a case with missing or extra channels (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FedSegNetError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise FedSegNetError(f"{folder}: no .nii or .nii.gz files")
    if int(in_channels) == 1:
        return {_stem(p): [p] for p in files}
    cases: dict[str, dict[int, Path]] = {}
    out = {}
    for p in files:
        m = _CHANNEL_SUFFIX.match(_stem(p))
        if not m and tuple(_open(p).shape[3:]) == (int(in_channels),):
            out[_stem(p)] = [p]
            continue
        if not m:
            raise FedSegNetError(
                f"{p}: the model takes {in_channels} channels; name channel files <case>_0000.nii.gz, <case>_0001.nii.gz, ..."
            )
        cases.setdefault(m["case"], {})[int(m["channel"])] = p
    for case, channels in sorted(cases.items()):
        if sorted(channels) != list(range(int(in_channels))):
            raise FedSegNetError(
                f"{folder}: case {case!r} has channel file(s) {sorted(channels)}, expected 0..{int(in_channels) - 1}"
            )
        out[case] = [channels[i] for i in range(int(in_channels))]
    return dict(sorted(out.items()))


def infer_folder(
    model: torch.nn.Module,
    spec: dict,
    folder: str | Path,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: Callable | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Segment every case of ``folder`` into ``out_dir/<case>.nii.gz``.

    Args:
        device: where inference runs. Defaults to ``"cpu"``.
        progress: wraps the case iterable (e.g. ``tqdm``). Defaults to None.
        overwrite: replace ``out_dir`` when an earlier run made it (see :func:`check_output_dir`).
            Defaults to False.

    Returns:
        The written files. A case that fails stops the run with an error naming it; files already
        written stay.

    Raises:
        FedSegNetError, OutputError: see :func:`check_output_dir` and :func:`cases_in_folder`.
    """
    cases = cases_in_folder(folder, spec["in_channels"])
    check_output_dir(out_dir, folder, overwrite=overwrite)
    items = list(cases.items())
    written = []
    for case, files in progress(items) if progress else items:
        labels, ref = predict_case(model, spec, files, device=device)
        written.append(save_labels(labels, ref, Path(out_dir) / f"{case}.nii.gz"))
    return written
