"""MONAI bundle export: a saved global model as a MONAI bundle that segments like ``fedsegnet infer``.

A MONAI bundle (https://docs.monai.io/en/latest/mb_specification.html) is a folder that MONAI's
own tools run: ``python -m monai.bundle run --config_file configs/inference.json`` from the
bundle folder, with ``--dataset_dir`` (a folder of NIfTI scans) and ``--output_dir`` overridable on
the command line. :func:`export_bundle` writes::

    configs/metadata.json    versions, task, the network's inputs and outputs, the model spec and file hash
    configs/inference.json   the network, preprocessing, sliding-window inferer, postprocessing, the run
    models/model.pt          the network's state dict (torch.save; loads with weights_only=True)
    scripts/__init__.py      the bundle's own code (MONAI bundles import ``scripts.*`` from the bundle root)
    scripts/fedsegnet_infer.py   the case list, the loop over cases, and the return to the input grid
    docs/README.md, LICENSE  what the bundle does, where it came from, how to run it

What ``inference.json`` runs is what :func:`fedsegnet.training.infer.predict_case` runs, stated in
MONAI components: load (channels first), reorient to RAS, resample to the model's spacing
(bilinear), the model's intensity normalisation, sliding-window inference with the training patch
size and ``fedsegnet infer``'s window settings, argmax; then every voxel of the input's own grid
takes the label of the model-grid voxel its centre falls in, by fedsegnet's own
:func:`~fedsegnet.training.infer.to_input_grid` (copied into ``scripts/fedsegnet_infer.py`` at
export; ties to the higher index, as in ``fedsegnet infer``. MONAI's own ``Invertd`` would
resample with ``grid_sample``, which breaks exact half-voxel ties otherwise: they occur wherever the
model's spacing is an even multiple of the input's, e.g. a 0.75 mm scan under a 1.5 mm model, where
it changed 7% of the voxels of an untrained model's label map), and the label values are the
model's (BraTS's 0/1/2/4). Outputs are ``<output_dir>/<first input file name>_seg.nii.gz`` (uint8,
the input's affine). Before anything is written the export checks both halves: the configured
network takes the weights strictly, and the configured preprocessing gives the tensor fedsegnet's
gives on a test volume.

The network: MONAI's ``SwinUNETR``, ``UNETR`` and ``SegResNet`` are named as MONAI components,
so such a bundle needs MONAI, torch, numpy and nibabel only; FedSegNet's own networks
(``hybrid_unetr``, ``dca_unetr``) are built by ``fedsegnet.networks.build_network``, so those bundles
need the ``fedsegnet`` package installed as well (``required_packages_version`` says so).
``python -m monai.bundle`` parses its command line with ``fire``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from fedsegnet.errors import FedSegNetError

logger = logging.getLogger(__name__)

__all__ = ["MONAI_NETWORKS", "SCHEMA", "bundle_script", "export_bundle", "inference_config", "metadata", "network_def",
           "prepare_bundle", "write_bundle"]

MONAI_NETWORKS = {"swin_unetr": "SwinUNETR", "unetr": "UNETR", "segresnet": "SegResNet"}
"""Registry networks that are MONAI networks built with the registry's own fixed arguments:
a bundle names them as MONAI components."""
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
"""The MONAI metadata schema ``metadata.json`` declares (``monai.bundle verify_metadata`` downloads it)."""
SCRIPT = "fedsegnet_infer"
"""The bundle's module under ``scripts/``."""
_AXIS_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]  # nibabel's RAS+ (fedsegnet.data.transforms)


_PLAIN = re.compile(r"^[A-Za-z0-9_.+\- ]{0,64}$")
"""What a string from the model file may be to enter ``inference.json`` (network arguments)."""
_CODE_MARKS = ("$", "@", "%")
"""MONAI's config syntax: a string that starts with ``$`` is Python, one that is ``@id`` a reference,
one that starts with ``%`` a macro (``@``/``%`` with ``#`` also inside strings): text from the model
file that reaches a bundle must hold none of them."""


def _check_plain(field: str, value) -> None:
    """Refuse a network argument from the (untrusted) model file that MONAI could read as code."""
    if isinstance(value, str) and not _PLAIN.match(value):
        raise FedSegNetError(
            f"model spec: {field}={value!r}: a network argument in a bundle may hold only letters, digits, "
            f"'_', '.', '+', '-' and spaces (MONAI reads $, @ and % in a config as code, references and macros)"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(f"{field} (a key)", key)
            _check_plain(f"{field}.{key}", item)
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(f"{field}[{i}]", item)


def _argument(field: str, value):
    """A network argument for the config: a list or dict becomes a Python literal expression (a JSON list
    a tuple, as the registry's builders and :func:`~fedsegnet.training.spec.preset_from_spec` make it;
    a dict stays one literal, so MONAI never reads its keys as ``_target_`` and the like)."""
    _check_plain(field, value)
    if isinstance(value, list):
        return "$" + repr(tuple(value))
    if isinstance(value, dict):
        return "$" + repr(value)
    return value


def _check_names(spec: dict) -> None:
    """Refuse class, region and preset names (free text from the model file) that MONAI could read as code."""
    names = [("preset", spec.get("preset") or "")]
    names += [(f"classes[{i}]", c[0]) for i, c in enumerate(spec.get("classes") or [])]
    names += [(f"regions.{k}", k) for k in spec.get("regions") or {}]
    for field, name in names:
        if any(mark in str(name) for mark in _CODE_MARKS):
            raise FedSegNetError(f"model spec: {field}={name!r}: a name in a bundle may not hold $, @ or % (MONAI config syntax)")


def network_def(spec: dict) -> dict:
    """The ``network_def`` component of ``inference.json``: the spec's network with its arguments.

    Args:
        spec: a checked model spec (:func:`fedsegnet.training.spec.check_spec`).

    Returns:
        A MONAI config component (``_target_`` and arguments); a MONAI class for
        :data:`MONAI_NETWORKS`, else ``fedsegnet.networks.build_network``.
    """
    kwargs = {k: _argument(f"network_kwargs.{k}", v) for k, v in spec.get("network_kwargs", {}).items()}
    channels = {"in_channels": int(spec["in_channels"]), "out_channels": int(spec["num_classes"])}
    patch = [int(v) for v in spec["patch_size"]]
    name = spec["network"]
    if name not in MONAI_NETWORKS:
        return {"_target_": "fedsegnet.networks.build_network", "name": name, **channels, "patch_size": patch, **kwargs}
    fixed = {"spatial_dims": 3}
    if name == "unetr":
        fixed["img_size"] = patch
    return {"_target_": MONAI_NETWORKS[name], **channels, **fixed, **kwargs}


def _intensity(spec: dict) -> dict:
    mode = spec["intensity"]
    if mode in ("zscore", "zscore_nonzero"):
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": mode == "zscore_nonzero", "channel_wise": True}
    if mode == "minmax":
        return {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": True}
    if mode == "ct_window":
        low, high = (float(v) for v in spec.get("intensity_range", (-175.0, 250.0)))
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0,
                "clip": True}  # fmt: skip
    raise FedSegNetError(f"model spec: intensity={mode!r}: no MONAI bundle form for it")


def _window_settings() -> dict:
    """``fedsegnet infer``'s sliding-window settings (the defaults of ``predict_case``)."""
    from fedsegnet.training.infer import predict_case

    params = inspect.signature(predict_case).parameters
    return {"sw_batch_size": int(params["sw_batch_size"].default), "overlap": float(params["overlap"].default)}


def inference_config(spec: dict) -> dict:
    """The content of ``configs/inference.json`` for a model spec.

    Args:
        spec: a checked model spec.

    Returns:
        A MONAI bundle config (JSON-able): ids ``bundle_root``, ``dataset_dir``, ``output_dir``,
        ``device``, ``ckpt_path``, ``datalist``, ``network_def``, ``network``, ``preprocessing``,
        ``inferer``, ``postprocessing``, ``initialize`` and ``run``.

    Raises:
        FedSegNetError: the spec's intensity normalisation has no MONAI form here.
    """
    script = f"scripts.{SCRIPT}"
    return {
        "imports": ["$import torch", "$import numpy"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "datalist": {"_target_": f"{script}.list_cases", "dataset_dir": "@dataset_dir", "in_channels": int(spec["in_channels"])},
        "network_def": network_def(spec),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True, "dtype": "$numpy.float32"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": _AXIS_LABELS},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [float(v) for v in spec["spacing"]], "mode": "bilinear"},
                _intensity(spec),
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(v) for v in spec["patch_size"]], **_window_settings()},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": f"{script}.ToInputGridd", "keys": "pred", "image_key": "image",
                 "label_values": [int(v) for v in spec.get("label_values") or []]},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_ext": ".nii.gz", "output_dtype": "$numpy.uint8", "separate_folder": False, "resample": False},
            ],
        },  # fmt: skip
        "initialize": ["$@network_def.load_state_dict(torch.load(@ckpt_path, map_location='cpu', weights_only=True))"],
        "run": [{"_target_": f"{script}.segment", "datalist": "@datalist", "preprocessing": "@preprocessing",
                 "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing", "device": "@device"}],
    }  # fmt: skip


def _versions() -> dict:
    import monai
    import nibabel

    return {
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "nibabel": nibabel.__version__,
    }


def metadata(spec: dict, model_path: str | Path, sha256: str) -> dict:
    """The content of ``configs/metadata.json`` (MONAI's mandatory keys, plus ``fedsegnet``: the model
    file's name, SHA-256 and spec as one JSON string, so that no text of the file is ever config syntax).

    Args:
        spec: a checked model spec.
        model_path: the model file it came from (its name is recorded).
        sha256: the model file's SHA-256 (hex).

    Returns:
        The metadata (JSON-able). ``network_data_format`` describes what the network itself takes
        and gives: windows of the patch size, float32, ``in_channels`` channels in, one logit
        channel per class out (``channel_def``: the class names).

    Raises:
        FedSegNetError: a class, region or preset name holds ``$``, ``@`` or ``%`` (MONAI config syntax).
    """
    import fedsegnet
    from fedsegnet.training.spec import class_names_of

    versions = _versions()
    required = {"nibabel": versions.pop("nibabel")}
    if spec["network"] not in MONAI_NETWORKS:
        required["fedsegnet"] = fedsegnet.__version__
    names = class_names_of(spec)
    values = spec.get("label_values") or list(range(int(spec["num_classes"])))
    ct = spec["intensity"] == "ct_window"
    patch = [int(v) for v in spec["patch_size"]]
    _check_names(spec)
    shown = "".join("_" if c in _CODE_MARKS + ("#",) else c for c in Path(model_path).name)  # free text, never code
    source = f"{shown} (sha256 {sha256})"
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by fedsegnet {fedsegnet.__version__} from {source}"},
        **versions,
        "required_packages_version": required,  # MONAI reads the older optional_packages_version as this one
        "name": f"fedsegnet_{spec['network']}_{spec.get('preset') or 'model'}",
        "task": "3D segmentation of "
        + (", ".join(names[1:]) or "the foreground")
        + f" ({int(spec['in_channels'])} image channel(s))",
        "description": (
            f"A FedSegNet global model (network {spec['network']}, preset {spec.get('preset')}) trained by federated "
            f"learning on NVIDIA FLARE, exported from {source}. inference.json segments every NIfTI scan of "
            f"dataset_dir like `fedsegnet infer --image-dir`: the label map of each has the scan's own shape and "
            f"affine, label values {values} for {names}."
        ),
        "authors": "the federation that trained the model (exported by fedsegnet)",
        "copyright": "the federation that trained the model",
        "intended_use": "research; not for diagnostic use",
        "data_type": "nibabel",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if ct else "magnitude",
                    "modality": "CT" if ct else "n/a",
                    "num_channels": int(spec["in_channels"]),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(c): f"image channel {c} (training order), normalised ({spec['intensity']})"
                                    for c in range(int(spec["in_channels"]))},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "modality": "n/a",
                    "num_channels": int(spec["num_classes"]),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): name for i, name in enumerate(names)},
                }
            },
        },  # fmt: skip
        # one JSON string: the spec's text (class patterns, the file name) stays data whatever it holds
        "fedsegnet": json.dumps({"model_file": Path(model_path).name, "sha256": sha256, "spec": spec}),
    }


_SCRIPT_HEAD = '''"""The bundle's own code, written by `fedsegnet export bundle` (fedsegnet {version}).

`to_input_grid` is fedsegnet's (fedsegnet.training.infer.to_input_grid, copied at export): each voxel
of the input's grid takes the label of the model-grid voxel its centre falls in (nearest neighbour
through the two affines, ties to the higher index, outside = background), so this bundle writes the
label maps `fedsegnet infer` writes, voxel for voxel. Needs numpy, torch and MONAI.
"""

import logging
import re
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

logger = logging.getLogger(__name__)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\\d{{4}})\\.nii(\\.gz)?$")


def list_cases(dataset_dir, in_channels=1):
    """The cases of a folder as `fedsegnet infer --image-dir` finds them: with one channel every .nii /
    .nii.gz file is a case; with several, <case>_0000.nii.gz, <case>_0001.nii.gz, ... are one case's
    channels and a file without that suffix is a case with its channels last (4D)."""
    folder = Path(dataset_dir)
    files = sorted(p for p in folder.glob("*.nii*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise FileNotFoundError(f"{{folder}}: no .nii or .nii.gz files (set dataset_dir)")
    if int(in_channels) == 1:
        return [{{"image": str(p)}} for p in files]
    cases, groups = [], {{}}
    for p in files:
        m = _CHANNEL.match(p.name)
        if m is None:
            cases.append({{"image": str(p)}})
        else:
            groups.setdefault(m["case"], {{}})[int(m["channel"])] = p
    for case, channels in sorted(groups.items()):
        if sorted(channels) != list(range(int(in_channels))):
            raise ValueError(f"{{folder}}: case {{case!r}} has channel file(s) {{sorted(channels)}}, expected 0..{{int(in_channels) - 1}}")
        cases.append({{"image": [str(channels[c]) for c in range(int(in_channels))]}})
    return cases


def segment(datalist, preprocessing, network, inferer, postprocessing, device):
    """Segment the cases one at a time (preprocess, sliding window, postprocess, which writes the file);
    returns how many."""
    network.eval()
    with torch.no_grad():
        for item in datalist:
            data = preprocessing(item)
            data["pred"] = inferer(data["image"].unsqueeze(0).to(device), network)[0].cpu()
            postprocessing(data)
            logger.info("segmented %s", item["image"])
    return len(datalist)


class ToInputGridd(MapTransform):
    """Class ids on the model's grid -> the model's label values on the input's own grid.

    Args:
        keys: the prediction, (1, X, Y, Z) class ids on the grid of `image_key`.
        image_key: the preprocessed image (its affine is the model grid's; its meta keeps the input's
            `original_affine` and `spatial_shape`).
        label_values: the value written for each class id; empty = the class ids.
    """

    def __init__(self, keys, image_key="image", label_values=()):
        super().__init__(keys)
        self.image_key = image_key
        self.label_values = np.asarray(label_values, dtype=np.uint8) if len(label_values) else None

    def __call__(self, data):
        d = dict(data)
        image = d[self.image_key]
        model_affine = np.asarray(image.affine, dtype=np.float64)
        input_affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
        shape = tuple(int(v) for v in np.asarray(image.meta["spatial_shape"]).ravel()[:3])
        meta = {{k: v for k, v in image.meta.items() if k != "affine"}}
        for key in self.key_iterator(d):
            pred = np.asarray(d[key].detach().cpu())[0].astype(np.uint8)
            labels = to_input_grid(pred, model_affine, input_affine, shape)
            if self.label_values is not None:
                labels = self.label_values[labels]
            d[key] = MetaTensor(torch.from_numpy(labels[None]), affine=torch.as_tensor(input_affine), meta=dict(meta))
        return d

'''


def bundle_script() -> str:
    """The text of ``scripts/fedsegnet_infer.py``: the case list and loop, :class:`ToInputGridd`, and
    the source of :func:`fedsegnet.training.infer.to_input_grid` (numpy only)."""
    import fedsegnet
    from fedsegnet.training.infer import to_input_grid

    return _SCRIPT_HEAD.format(version=fedsegnet.__version__) + "\n" + inspect.getsource(to_input_grid)


def _readme(spec: dict, meta: dict) -> str:
    needs = ", ".join(f"{k} ({v})" for k, v in meta["required_packages_version"].items())
    values = spec.get("label_values") or list(range(int(spec["num_classes"])))
    channels = int(spec["in_channels"])
    inputs = ("one NIfTI file per case" if channels == 1 else
              f"{channels} channels per case: `<case>_0000.nii.gz` ... `<case>_{channels - 1:04d}.nii.gz`, or one 4D file with the channels last")  # fmt: skip
    return f"""# {meta["name"]}

{meta["description"]}

Needs MONAI ({meta["monai_version"]} at export), torch ({meta["pytorch_version"]}), {needs}, and `fire` for
MONAI's command line. Run it from this folder:

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/scans --output_dir /path/to/segs
```

Input: {inputs}. Each case gives `<output_dir>/<first file name>_seg.nii.gz`: uint8, the scan's own
shape and affine, label values {values}. From another folder add `--bundle_root /path/to/this/bundle`.
MONAI's writer replaces a file of the same name in `output_dir`.

`configs/metadata.json` holds the model spec and the SHA-256 of the model file the bundle came from;
`scripts/{SCRIPT}.py` the case list, the loop over cases and the return to the input grid. For
research; not for diagnostic use.
"""


_LICENSE = """The weights in models/model.pt are those of a model trained by a federation of sites with
FedSegNet and exported by `fedsegnet export bundle`. The sites that trained it decide the terms under
which it may be shared and used; no licence was stated at export. Replace this file with those terms
before you share the bundle.
"""


def _check_network(config: dict, model: torch.nn.Module) -> None:
    """The configured ``network_def`` must take the model's weights strictly, name for name and shape for shape."""
    from monai.bundle import ConfigParser

    try:
        net = ConfigParser(config).get_parsed_content("network_def")
        net.load_state_dict(model.state_dict(), strict=True)
    except Exception as e:  # MONAI or torch: a config that does not build the same network
        raise FedSegNetError(f"the bundle's network_def does not build the model's network ({type(e).__name__}: {e})") from None


def _check_preprocessing(config: dict, spec: dict) -> None:
    """The configured preprocessing must give the tensor fedsegnet's evaluation transforms give, on a
    small oblique test volume (one file per channel)."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    from fedsegnet.data.transforms import eval_transforms
    from fedsegnet.training.spec import preset_from_spec

    rng = np.random.default_rng(0)
    affine = np.array([[0.0, -1.3, 0.2, 10.0], [0.9, 0.0, 0.0, -4.0], [0.0, 0.1, 2.1, 7.0], [0.0, 0.0, 0.0, 1.0]])
    with tempfile.TemporaryDirectory(prefix="fedsegnet-bundle-check-") as tmp:
        files = []
        for c in range(int(spec["in_channels"])):
            data = rng.normal(100.0, 80.0, size=(19, 17, 11)).astype(np.float32)
            data[:3] = 0.0  # a zero border, as in skull-stripped MRI (zscore_nonzero)
            files.append(str(Path(tmp) / f"case_{c:04d}.nii.gz"))
            nib.save(nib.Nifti1Image(data, affine), files[-1])
        item = {"image": files if len(files) > 1 else files[0]}
        ours = eval_transforms(preset_from_spec(spec))(dict(item))["image"]
        theirs = ConfigParser(config).get_parsed_content("preprocessing")(dict(item))["image"]
    same = (
        tuple(ours.shape) == tuple(theirs.shape)
        and np.allclose(np.asarray(ours.affine), np.asarray(theirs.affine), atol=1e-5)
        and np.allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
    )
    if not same:
        raise FedSegNetError("the bundle's preprocessing gives another tensor than fedsegnet infer's on a test volume")


def prepare_bundle(model_path: str | Path) -> dict:
    """Read a saved global model and make its bundle in memory, checked, before anything is written.

    Args:
        model_path: a model file as the server saves it (``FL_global_model.pt``; read as untrusted
            input by :func:`~fedsegnet.training.spec.load_model_file`).

    Returns:
        ``{"model_path", "model", "spec", "sha256", "config", "metadata"}`` for :func:`write_bundle`.

    Raises:
        FedSegNetError: the model file is unreadable or does not fit its spec (named), its spec has
            no bundle form, or the config would not reproduce the network or the preprocessing.
    """
    from fedsegnet.training.spec import load_model_file

    model_path = Path(model_path)
    model, spec = load_model_file(model_path)
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    config = inference_config(spec)
    _check_network(config, model)
    _check_preprocessing(config, spec)
    return {"model_path": model_path, "model": model, "spec": spec, "sha256": sha256, "config": config,
            "metadata": metadata(spec, model_path, sha256)}  # fmt: skip


def write_bundle(prepared: dict, out_dir: str | Path) -> dict:
    """Write a prepared bundle (:func:`prepare_bundle`) into ``out_dir``, which the caller claimed
    (:func:`fedsegnet.outputs.claim_dir`).

    Returns:
        A summary: ``{"bundle": out_dir, "files": [...], "network": ..., "needs_fedsegnet": bool, "sha256": ...}``.
    """
    bundle = Path(out_dir)
    spec, meta = prepared["spec"], prepared["metadata"]
    for sub in ("configs", "models", "scripts", "docs"):
        (bundle / sub).mkdir(parents=True, exist_ok=True)
    torch.save(prepared["model"].state_dict(), bundle / "models" / "model.pt")
    (bundle / "configs" / "inference.json").write_text(json.dumps(prepared["config"], indent=2) + "\n")
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (bundle / "scripts" / "__init__.py").write_text(f'"""Code of this MONAI bundle (see {SCRIPT}.py)."""\n')
    (bundle / "scripts" / f"{SCRIPT}.py").write_text(bundle_script())
    (bundle / "docs" / "README.md").write_text(_readme(spec, meta))
    (bundle / "LICENSE").write_text(_LICENSE)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and not p.name.startswith("."))
    logger.info("bundle of %s written to %s", prepared["model_path"], bundle)
    return {"bundle": bundle, "files": files, "network": spec["network"], "needs_fedsegnet": spec["network"] not in MONAI_NETWORKS,
            "sha256": prepared["sha256"]}  # fmt: skip


def export_bundle(model_path: str | Path, out_dir: str | Path) -> dict:
    """:func:`prepare_bundle` then :func:`write_bundle` (``out_dir`` claimed by the caller)."""
    return write_bundle(prepare_bundle(model_path), out_dir)
