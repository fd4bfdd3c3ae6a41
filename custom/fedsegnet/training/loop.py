"""Local training at a site and the model weights that sites and server exchange.

One federated round at a site is: load the global weights (:func:`load_exchanged_weights`), run a
fixed number of optimiser steps (:func:`train_steps`), and send the weights back
(:func:`state_dict_for_exchange`; the FLARE adapter turns them into an update). Mixed precision
follows the PyTorch AMP recipe (``torch.autocast`` + ``torch.amp.GradScaler``) and is used only on
CUDA.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from fedsegnet.errors import ConfigError
from fedsegnet.training.errors import TrainingError, WeightsError
from fedsegnet.progress import show_progress

logger = logging.getLogger(__name__)

__all__ = [
    "make_optimizer",
    "train_steps",
    "state_dict_for_exchange",
    "load_exchanged_weights",
    "strip_prefixes",
    "WRAPPER_PREFIXES",
]

#: Key prefixes added by wrappers, never part of exchanged weights: ``torch.compile``
#: (``OptimizedModule._orig_mod``) and ``DataParallel`` / ``DistributedDataParallel`` (``module``).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over all trainable parameters of ``model``.

    Args:
        model: the network.
        lr: learning rate, > 0.
        weight_decay: decoupled weight decay, >= 0.

    Returns:
        The optimiser.

    Raises:
        ConfigError: naming ``lr`` or ``weight_decay`` when out of range.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError("lr", lr, "must be a finite number > 0")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not (weight_decay >= 0 and math.isfinite(weight_decay))
    ):
        raise ConfigError("weight_decay", weight_decay, "must be a finite number >= 0")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=float(lr), weight_decay=float(weight_decay))


def _batch_stream(batches: Iterable) -> Callable[[], dict]:
    """Return ``next_batch()``: an iterator is drawn from until exhausted; a re-iterable (a
    DataLoader, a list) is restarted when exhausted, i.e. cycled over epochs."""
    if isinstance(batches, Iterator):
        return lambda: next(batches)
    state = {"it": iter(batches), "fresh": True}

    def draw():
        try:
            batch = next(state["it"])
            state["fresh"] = False
            return batch
        except StopIteration:
            if state["fresh"]:
                raise
            state["it"] = iter(batches)
            state["fresh"] = True
            batch = next(state["it"])
            state["fresh"] = False
            return batch

    return draw


def _check_batch(batch, step: int, steps: int, any_label_channels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    where = f"step {step}/{steps}"
    if not isinstance(batch, Mapping):
        raise TrainingError(f"{where}: batch must be a dict with 'image' and 'label', got {type(batch).__name__}", step)
    missing = [k for k in ("image", "label") if k not in batch]
    if missing:
        raise TrainingError(f"{where}: batch has no {missing} (keys: {sorted(map(str, batch))})", step)
    image, label = batch["image"], batch["label"]
    if not isinstance(image, torch.Tensor) or image.ndim != 5:
        raise TrainingError(f"{where}: batch['image'] must be a (B, C, X, Y, Z) tensor, got {_describe(image)}", step)
    if not isinstance(label, torch.Tensor) or label.ndim != 5 or (label.shape[1] != 1 and not any_label_channels):
        raise TrainingError(f"{where}: batch['label'] must be a (B, 1, X, Y, Z) tensor, got {_describe(label)}", step)
    if label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise TrainingError(
            f"{where}: batch['label'] shape {tuple(label.shape)} does not match batch['image'] "
            f"shape {tuple(image.shape)} (same B, X, Y, Z expected)",
            step,
        )
    return image, label


def _describe(value) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__


def train_steps(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: str | torch.device,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool | str = False,
    desc: str = "train",
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    loss_extras: Callable[[Mapping, torch.Tensor], dict] | None = None,
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Run exactly ``steps`` optimiser steps (unless stopped) and report what happened.

    The model is put in train mode and left there. ``should_stop()`` is called before every step;
    when it returns True the loop ends early with ``aborted=True`` (FLARE's abort signal).

    Args:
        model: the network, already on ``device``.
        batches: batches ``{"image": (B, C, X, Y, Z) float, "label": (B, 1, X, Y, Z) class ids
            (int or float)}``. An iterator is drawn from until it is exhausted (then
            :class:`TrainingError`); a re-iterable such as a ``DataLoader`` or a list is cycled,
            one pass per epoch, so a round may span epochs.
        steps: optimiser steps to run, >= 1.
        optimizer: optimiser over ``model``'s parameters (see :func:`make_optimizer`).
        loss_fn: ``loss_fn(logits, label) -> scalar`` (see :func:`~fedsegnet.training.build_loss`).
        device: where tensors are moved before the forward pass.
        amp: mixed precision (float16 autocast + gradient scaling) when ``device`` is CUDA;
            ignored on CPU. Defaults to False.
        scaler: gradient scaler to use with AMP; pass one that lives across rounds to keep its
            scale. Defaults to None (a new one per call when AMP is active).
        should_stop: checked before each step; True stops early. Defaults to None.
        progress: ``True`` shows a tqdm bar only when stderr is a terminal, ``"force"`` always,
            ``False`` never. Defaults to False.
        desc: label of the progress bar and of the log line. Defaults to ``"train"``.
        regularizer: ``regularizer(model) -> scalar`` added to every step's loss (for instance
            FedProx's proximal term to the received global model). Defaults to None.
        loss_extras: ``loss_extras(batch, image) -> dict`` of keyword arguments for
            ``loss_fn(logits, label, **extras)`` (weak-label losses: the batch's tags, the
            received global model's logits on ``image``); the label may then have any number of
            channels (box channels). Defaults to None.
        extra_loss: ``extra_loss(model, image, label, logits) -> scalar`` added to every step's
            loss, for terms that run the model again (the perturbed boundary loss,
            :class:`~fedsegnet.training.boundary_loss.PerturbedBoundaryLoss`). Defaults to None.

    Returns:
        ``{"steps": int (steps done), "loss_first": float | None, "loss_last": float | None,
        "loss_mean": float | None (None when no step ran), "seconds": float,
        "voxels": int (sum over steps of B * X * Y * Z), "aborted": bool}``.

    Raises:
        ConfigError: for ``steps`` < 1 or a bad ``progress``.
        TrainingError: naming the step, for a malformed batch, exhausted ``batches`` or a
            non-finite loss.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", steps, "must be an integer >= 1")
    show = show_progress(progress)
    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    if use_amp and scaler is None:
        scaler = torch.amp.GradScaler("cuda")
    next_batch = _batch_stream(batches)

    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)

    model.train()
    losses: list[float] = []
    voxels = 0
    aborted = False
    start = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                aborted = True
                logger.info("%s: stopped before step %d/%d", desc, step, steps)
                break
            try:
                batch = next_batch()
            except StopIteration:
                raise TrainingError(
                    f"step {step}/{steps}: batches ran out after {step - 1} batch(es); pass a "
                    "re-iterable (DataLoader, list) or an endless iterator",
                    step,
                ) from None
            image, label = _check_batch(batch, step, steps, any_label_channels=loss_extras is not None)
            # plain tensors: MONAI MetaTensors would carry (and slow down) metadata through every op
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            label = label.as_tensor() if hasattr(label, "as_tensor") else label
            image = image.to(device, dtype=torch.float32, non_blocking=True)
            label = label.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(image)
                loss = loss_fn(logits, label, **loss_extras(batch, image)) if loss_extras else loss_fn(logits, label)
                if regularizer is not None:
                    loss = loss + regularizer(model)
                if extra_loss is not None:
                    loss = loss + extra_loss(model, image, label, logits)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"step {step}/{steps}: loss is {value} (non-finite); stopping", step)
            if use_amp:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            losses.append(value)
            voxels += int(image.shape[0]) * math.prod(int(s) for s in image.shape[2:])
            logger.debug("%s: step %d/%d loss %.5f", desc, step, steps, value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    result = {
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_mean": float(sum(losses) / len(losses)) if losses else None,
        "seconds": seconds,
        "voxels": voxels,
        "aborted": aborted,
    }
    if losses:
        logger.info(
            "%s: %d step(s) in %.1f s, loss %.4f -> %.4f (mean %.4f)%s",
            desc, len(losses), seconds, losses[0], losses[-1], result["loss_mean"], ", aborted" if aborted else "",
        )
    return result


def strip_prefixes(key: str) -> str:
    """Remove leading :data:`WRAPPER_PREFIXES` (repeatedly) from a state-dict key."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def state_dict_for_exchange(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as sent between sites and server.

    Args:
        model: a plain, ``torch.compile``'d or ``DataParallel``-wrapped network.

    Returns:
        ``{key: tensor}`` with wrapper prefixes (``_orig_mod.``, ``module.``) removed, every value
        a new contiguous float32 CPU tensor (integer buffers such as BatchNorm's
        ``num_batches_tracked`` are converted too; :func:`load_exchanged_weights` casts back).
        Nothing aliases the model's own storage.

    Raises:
        WeightsError: when two keys collide after removing prefixes.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        plain = strip_prefixes(key)
        if plain in out:
            raise WeightsError(unexpected=[f"{key} (duplicates {plain})"])
        out[plain] = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return out


def _as_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            return None
        return torch.from_numpy(np.array(array, copy=True))
    return None


def load_exchanged_weights(model: nn.Module, weights: Mapping, strict: bool = True) -> dict[str, list[str]]:
    """Load exchanged weights into ``model`` (plain, compiled or DataParallel-wrapped).

    Keys are matched after removing wrapper prefixes on both sides, so weights from
    :func:`state_dict_for_exchange` load into a ``torch.compile``'d model and vice versa. Values are
    cast to each model tensor's dtype and device. ``weights`` is not modified.

    Args:
        model: the network to load into.
        weights: ``{key: torch.Tensor | numpy.ndarray}``.
        strict: when True, any missing or unexpected key is an error; when False they are
            skipped and reported. Shape mismatches and non-array values are always errors.
            Defaults to True.

    Returns:
        ``{"missing": [...], "unexpected": [...]}`` (plain keys; both empty when strict).

    Raises:
        WeightsError: listing (the first few) missing and unexpected keys, shape mismatches and
            values that are neither tensors nor arrays. Nothing is loaded in that case.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError("weights", type(weights).__name__, "must be a dict of tensors or arrays")
    model_state = model.state_dict()
    plain_to_model = {strip_prefixes(k): k for k in model_state}
    incoming: dict[str, object] = {}
    for key, value in weights.items():
        incoming[strip_prefixes(str(key))] = value

    missing = sorted(k for k in plain_to_model if k not in incoming)
    unexpected = sorted(k for k in incoming if k not in plain_to_model)
    mismatched: list[tuple[str, tuple, tuple]] = []
    bad_values: list[tuple[str, str]] = []
    converted: dict[str, torch.Tensor] = {}
    for plain, value in incoming.items():
        if plain not in plain_to_model:
            continue
        tensor = _as_tensor(value)
        if tensor is None:
            bad_values.append((plain, type(value).__name__))
            continue
        target = model_state[plain_to_model[plain]]
        if tuple(tensor.shape) != tuple(target.shape):
            mismatched.append((plain, tuple(tensor.shape), tuple(target.shape)))
            continue
        converted[plain_to_model[plain]] = tensor
    if mismatched or bad_values or (strict and (missing or unexpected)):
        raise WeightsError(
            missing=missing if strict else [],
            unexpected=unexpected if strict else [],
            mismatched=mismatched,
            bad_values=bad_values,
        )
    # load_state_dict copies into the existing tensors (casting dtype and device) and runs any
    # module hooks; the missing keys were checked above.
    model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        logger.warning(
            "loaded weights non-strictly: %d missing, %d unexpected key(s)", len(missing), len(unexpected)
        )
    return {"missing": missing, "unexpected": unexpected}
