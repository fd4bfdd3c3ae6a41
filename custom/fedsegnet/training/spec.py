"""Model spec: what a saved global model needs to be rebuilt (network, arguments, channels, preprocessing).

The server persistor writes it into FLARE's checkpoint (``train_conf["fedsegnet"]``); ``fedsegnet eval``
reads it back, so a ``.pt`` file is enough to evaluate or apply a model.

A model file is untrusted input. :func:`load_model_file` reads it with ``torch.load(weights_only=True)``,
checks the spec's types and ranges (:func:`check_spec`, bounds below), builds the network with its
parameters on the ``meta`` device (no memory), bounds its size by :data:`MAX_MODEL_VALUES` and
compares every weight's name and shape with the file's before building the network for real, so
that a small file declaring a huge network fails at once, with one line naming the file and field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from fedsegnet.config import INTENSITY_MODES, PRESETS, Preset
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.networks import NETWORKS, build_network
from fedsegnet.training.loop import load_exchanged_weights, strip_prefixes

SPEC_VERSION = 1
MAX_IN_CHANNELS = 64
"""Most image channels (modalities) a spec may declare."""
MAX_CLASSES = 1024
"""Most classes (with background) a spec may declare."""
MAX_PATCH = 1024
"""Largest patch size dim (voxels) a spec may declare."""
MAX_KWARG_INT = 4096
"""Largest number in a spec's ``network_kwargs`` (widths, heads, MLP sizes; 4 times UNETR's 768)."""
SMALL_KWARGS = {"num_layers": 64, "depths": 64, "blocks_down": 64, "blocks_up": 64, "dca_layers": 64, "window_size": 16}
"""``network_kwargs`` with their own, smaller bound: layer counts (each builds modules) and Swin's
window (its relative position index has ``window_size ** 6`` entries)."""
MAX_KWARG_ITEMS = 8
"""Longest list (and largest dict) in a spec's ``network_kwargs``."""
MAX_MODEL_VALUES = 2**28
"""Most values (parameters and buffers) the spec's network may have: 1 GiB as float32, 2.6 times
UNETR's."""


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
    preset = preset_from_spec(spec)
    return build_network(
        preset.network,
        in_channels=spec["in_channels"],
        out_channels=spec["num_classes"],
        patch_size=preset.patch_size,
        **dict(preset.network_kwargs),
    )


def _short(value) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(source: str, field: str, value, problem: str) -> FedSegNetError:
    return FedSegNetError(f"{source}: {field}={_short(value)}: {problem}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_kwarg(source: str, field: str, value, bound: int, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if len(value) > 64:
            raise _bad(source, field, value, "a string of at most 64 characters")
        return
    if _is_number(value):
        if abs(value) > bound:
            raise _bad(source, field, value, f"must be at most {bound} in magnitude")
        return
    if isinstance(value, (list, tuple, dict)) and depth < 3:
        if len(value) > MAX_KWARG_ITEMS:
            raise _bad(source, field, value, f"at most {MAX_KWARG_ITEMS} items")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                raise _bad(source, field, value, "dict keys must be strings")
            _check_kwarg(source, f"{field}.{key}" if isinstance(value, dict) else f"{field}[{key}]", item, bound, depth + 1)
        return
    raise _bad(source, field, value, "must be a number, string, bool, null, or a short list or dict of them")


def check_spec(spec, source: str = "model spec") -> None:
    """Check a model spec's types and ranges before anything is built from it.

    Args:
        spec: the spec (e.g. from a model file: untrusted).
        source: what the spec came from, the start of every message (e.g. ``"model file m.pt"``).
            Defaults to ``"model spec"``.

    Raises:
        FedSegNetError: one line naming ``source`` and the field: not a dict; an unknown network;
            ``in_channels`` (1..:data:`MAX_IN_CHANNELS`), ``num_classes`` (1..:data:`MAX_CLASSES`) or
            ``patch_size`` (3 ints in 1..:data:`MAX_PATCH`) of the wrong type or out of range;
            ``spacing``, ``intensity``, ``intensity_range``, ``classes``, ``regions`` or
            ``label_values`` malformed; ``network_kwargs`` not a dict of plain values, a number
            past :data:`MAX_KWARG_INT` (:data:`SMALL_KWARGS` for theirs) or a list or dict longer
            than :data:`MAX_KWARG_ITEMS`.
    """
    if not isinstance(spec, Mapping):
        raise FedSegNetError(f"{source}: the model spec must be a dict, got {type(spec).__name__}")
    network = spec.get("network")
    if not isinstance(network, str) or network not in NETWORKS:
        raise _bad(source, "network", network, f"unknown network (valid: {', '.join(sorted(NETWORKS))})")
    for field, high in (("in_channels", MAX_IN_CHANNELS), ("num_classes", MAX_CLASSES)):
        value = spec.get(field)
        if not _is_int(value) or not 1 <= value <= high:
            raise _bad(source, field, value, f"must be an integer in [1, {high}]")
    patch = spec.get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) != 3 or not all(_is_int(v) and 1 <= v <= MAX_PATCH for v in patch):
        raise _bad(source, "patch_size", patch, f"must be 3 integers in [1, {MAX_PATCH}]")
    spacing = spec.get("spacing")
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(_is_number(v) and v > 0 for v in spacing):
        raise _bad(source, "spacing", spacing, "must be 3 finite numbers > 0 (mm)")
    if spec.get("intensity") not in INTENSITY_MODES:
        raise _bad(source, "intensity", spec.get("intensity"), f"unknown (valid: {', '.join(INTENSITY_MODES)})")
    window = spec.get("intensity_range", [0.0, 1.0])
    if not isinstance(window, (list, tuple)) or len(window) != 2 or not all(_is_number(v) for v in window):
        raise _bad(source, "intensity_range", window, "must be 2 finite numbers")
    classes = spec.get("classes", [])
    if not isinstance(classes, (list, tuple)) or not all(
        isinstance(c, (list, tuple)) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in classes
    ):
        raise _bad(source, "classes", classes, "must be a list of [name, pattern] string pairs")
    regions = spec.get("regions", {})
    if not isinstance(regions, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) for k, v in regions.items()
    ):
        raise _bad(source, "regions", regions, "must map region names to lists of class names")
    labels = spec.get("label_values", [])
    if not isinstance(labels, (list, tuple)) or not all(_is_int(v) for v in labels):
        raise _bad(source, "label_values", labels, "must be a list of integers")
    kwargs = spec.get("network_kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise _bad(source, "network_kwargs", kwargs, "must be a dict of argument names to values")
    for key, value in kwargs.items():
        _check_kwarg(source, f"network_kwargs.{key}", value, SMALL_KWARGS.get(key, MAX_KWARG_INT))


class _MetaParameters(TorchFunctionMode):
    """Tensors made by the factories layers use for parameters and buffers go to the ``meta``
    device (shapes without memory); everything else (e.g. ``torch.linspace(...).item()`` in a
    constructor) runs as usual."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def spec_shapes(spec: dict, source: str = "model spec") -> dict[str, tuple[int, ...]]:
    """``{state-dict key (wrapper prefixes removed): shape}`` of the network ``spec`` describes,
    built with its parameters on the ``meta`` device: nothing of the network's size is allocated.

    Args:
        spec: a spec that passed :func:`check_spec`.
        source: the start of error messages. Defaults to ``"model spec"``.

    Raises:
        FedSegNetError: the network cannot be built from the spec (the message names the field the
            constructor names), or it has more than :data:`MAX_MODEL_VALUES` values.
    """
    try:
        with _MetaParameters():
            net = build_from_spec(spec)
    except ConfigError as e:
        raise FedSegNetError(f"{source}: {e}") from None
    except Exception as e:  # a constructor's own complaint about its arguments
        raise FedSegNetError(
            f"{source}: network_kwargs: network {spec['network']!r} cannot be built ({type(e).__name__}: {_short(str(e))})"
        ) from None
    shapes = {strip_prefixes(k): tuple(v.shape) for k, v in net.state_dict().items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_MODEL_VALUES:
        raise FedSegNetError(
            f"{source}: network_kwargs={_short(spec.get('network_kwargs'))}: network {spec['network']!r} would have "
            f"{total} values, more than {MAX_MODEL_VALUES}"
        )
    return shapes


def _check_weights(state, shapes: dict, source: str, network: str) -> None:
    got = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FedSegNetError(f"{source}: model[{_short(key)}]: must map names to tensors, got {type(value).__name__}")
        got[strip_prefixes(key)] = tuple(value.shape)
    missing, extra = sorted(set(shapes) - set(got)), sorted(set(got) - set(shapes))
    if missing or extra:
        raise FedSegNetError(
            f"{source}: weights do not fit network {network!r} of the spec: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} unexpected {extra[:3]}"
        )
    wrong = [k for k in shapes if got[k] != shapes[k]]
    if wrong:
        k = wrong[0]
        raise FedSegNetError(
            f"{source}: weights do not fit network {network!r} of the spec: {len(wrong)} shape(s) differ, "
            f"first model[{k!r}] {list(got[k])} where the spec implies {list(shapes[k])}"
        )
    for key, value in state.items():  # a model with NaN/Inf weights segments nothing and says nothing
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FedSegNetError(f"{source}: model[{_short(key)}] holds NaN or Inf")


def load_model_file(path: str | Path, spec: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a global model saved by FLARE's PT persistor (``{"model": state_dict, "train_conf": ...}``).

    Args:
        path: the ``.pt`` file.
        spec: the model spec to use when the file carries none. Defaults to None.

    Returns:
        ``(model, spec)`` with the weights loaded, in eval mode, on the CPU.

    The file is untrusted: the spec is checked (:func:`check_spec`) and the weights' names and
    shapes compared with a ``meta``-device build of its network (:func:`spec_shapes`) before the
    network is built for real, so the memory used is bounded by the file's own size.

    Raises:
        FedSegNetError: one line naming the file and the field: the file is missing, not a
            PyTorch file (garbage, truncated) or not loadable with ``weights_only=True``; it
            carries no spec and none was given; the spec is malformed or out of range; its network
            would be larger than :data:`MAX_MODEL_VALUES`; or its weights do not fit the spec's
            network (names, shapes) or hold NaN/Inf.
    """
    path = Path(path)
    source = f"model file {path}"
    if not path.is_file():
        raise FedSegNetError(f"{source} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FedSegNetError(
            f"{source}: not a readable PyTorch model file ({type(e).__name__}: {_short(first)})"
        ) from None
    file_spec = None
    if isinstance(data, dict) and "model" in data:
        state = data["model"]
        train_conf = data.get("train_conf")
        file_spec = train_conf.get("fedsegnet") if isinstance(train_conf, Mapping) else None
    else:
        state = data
    spec = file_spec or spec
    if spec is None:
        raise FedSegNetError(
            f"{source}: carries no FedSegNet model spec (train_conf['fedsegnet']); "
            f"pass the preset/classes it was trained with"
        )
    check_spec(spec, source)
    if not isinstance(state, Mapping):
        raise FedSegNetError(f"{source}: model: the weights must be a dict of tensors, got {type(state).__name__}")
    _check_weights(state, spec_shapes(spec, source), source, spec["network"])
    model = build_from_spec(spec)
    try:
        load_exchanged_weights(model, state, strict=True)
    except FedSegNetError as e:
        raise FedSegNetError(f"{source}: weights do not fit network {spec['network']!r}: {e}") from None
    model.eval()
    return model, spec
