"""Model spec: what a saved global model needs to be rebuilt (network, arguments, channels, preprocessing).

The server persistor writes it into FLARE's checkpoint (``train_conf["fedsegnet"]``); ``fedsegnet eval``
reads it back, so a ``.pt`` file is enough to evaluate or apply a model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fedsegnet.config import PRESETS, Preset
from fedsegnet.errors import FedSegNetError

SPEC_VERSION = 1


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def model_spec(preset: Preset, *, in_channels: int, num_classes: int) -> dict:
    """Describe the model and preprocessing of ``preset`` as a JSON-able dict (lists, no tuples).

    A dataset preset's classes (names and the patterns sites' labels are matched with), regions,
    written label values and CT window are kept too, so that the file alone says how to read a
    site's labels and how to write a prediction.
    """
    return {
        "spec_version": SPEC_VERSION,
        "preset": preset.name,
        "network": preset.network,
        "network_kwargs": _plain(dict(preset.network_kwargs)),
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "patch_size": [int(v) for v in preset.patch_size],
        "spacing": [float(v) for v in preset.spacing],
        "intensity": preset.intensity,
        "intensity_range": [float(v) for v in preset.intensity_range],
        "classes": _plain(preset.classes),
        "regions": _plain(dict(preset.regions)),
        "label_values": [int(v) for v in preset.label_values],
    }


def class_names_of(spec: dict) -> list[str]:
    """Class names of a spec (index = class id); ``class_<id>`` where the spec names none."""
    classes = spec.get("classes") or []
    if classes:
        return ["background"] + [str(name) for name, _ in classes]
    return ["background"] + [f"class_{i}" for i in range(1, int(spec["num_classes"]))]


def preset_from_spec(spec: dict) -> Preset:
    """The preset a spec was made from, with the spec's network, patch, spacing, intensity and classes.

    Specs written before classes were stored take them from the named preset.
    """
    base = PRESETS.get(spec.get("preset"), PRESETS["cpu"])
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("network_kwargs", {}).items()}
    changes = {}
    if "classes" in spec:
        changes = {
            "classes": tuple(tuple(c) for c in spec["classes"]),
            "regions": {k: tuple(v) for k, v in spec.get("regions", {}).items()},
            "label_values": tuple(int(v) for v in spec.get("label_values", [])),
            "intensity_range": tuple(spec.get("intensity_range", base.intensity_range)),
        }
    return dataclasses.replace(
        base,
        network=spec["network"],
        network_kwargs=kwargs,
        patch_size=tuple(spec["patch_size"]),
        spacing=tuple(spec["spacing"]),
        intensity=spec["intensity"],
        in_channels=int(spec["in_channels"]),
        num_classes=int(spec["num_classes"]),
        **changes,
    )


def build_from_spec(spec: dict) -> torch.nn.Module:
    """Build the (untrained) network a spec describes."""
    from fedsegnet.networks import build_network

    preset = preset_from_spec(spec)
    return build_network(
        preset.network,
        in_channels=spec["in_channels"],
        out_channels=spec["num_classes"],
        patch_size=preset.patch_size,
        **dict(preset.network_kwargs),
    )


def load_model_file(path: str | Path, spec: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a global model saved by FLARE's PT persistor (``{"model": state_dict, "train_conf": ...}``).

    Args:
        path: the ``.pt`` file.
        spec: the model spec to use when the file carries none. Defaults to None.

    Returns:
        ``(model, spec)`` with the weights loaded, in eval mode, on the CPU.

    Raises:
        FedSegNetError: the file is missing or unreadable, carries no spec and none was given, or its
            weights do not fit the spec's network.
    """
    path = Path(path)
    if not path.is_file():
        raise FedSegNetError(f"model file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise FedSegNetError(f"model file {path}: cannot be read by torch.load: {e}") from None
    if isinstance(data, dict) and "model" in data:
        state = data["model"]
        file_spec = (data.get("train_conf") or {}).get("fedsegnet")
    else:
        state, file_spec = data, None
    spec = file_spec or spec
    if spec is None:
        raise FedSegNetError(
            f"model file {path}: carries no FedSegNet model spec (train_conf['fedsegnet']); "
            f"pass the preset/classes it was trained with"
        )
    from fedsegnet.training.loop import load_exchanged_weights

    model = build_from_spec(spec)
    try:
        load_exchanged_weights(model, state, strict=True)
    except FedSegNetError as e:
        raise FedSegNetError(f"model file {path}: weights do not fit network {spec['network']!r}: {e}") from None
    model.eval()
    return model, spec
