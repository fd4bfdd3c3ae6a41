"""Patient-level DP-SGD for one site: one clipped gradient per training case, Gaussian noise,
every step composed by the accountant.

    Abadi M. et al., "Deep Learning with Differential Privacy", CCS 2016 (DP-SGD);
    Yousefpour A. et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch",
    arXiv:2109.12298, 2021.

One step, for the ``n`` cases the Poisson sampler drew (:mod:`fedsegnet.privacy.sampling`), each
with ``k`` crops, batched case after case:

1. Forward all ``n * k`` crops (no parameter gradients) and take the gradient ``b`` of
   ``sum_c loss_fn(logits of case c, labels of case c)`` with respect to the logits. Each case's
   loss is computed on its own crops only, so ``b`` of case c depends on case c alone.
2. Per-crop parameter gradients ``J_i^T b_i`` by ``torch.func`` (``vmap`` over crops of ``grad`` of
   ``<model(x_i), b_i>``): the formulation of Opacus's functorch mode
   (``opacus.grad_sample.functorch.prepare_layer``), applied to the whole network, with its
   constant buffers passed along. Summing the ``k`` crops of a case gives that case's gradient,
   exactly ``grad loss_fn(case c)``; it is put in ``p.grad_sample`` with one row per case.
3. Opacus's ``DPOptimizer`` clips each row to ``clip`` (the privacy unit: one case), adds
   ``N(0, (sigma * clip)^2)`` to the sum (``secure_mode``: robust to floating-point attacks),
   divides by the expected number of cases ``q * n_cases`` and steps the site's optimiser; its step
   hook composes the step in the :class:`~fedsegnet.privacy.PrivacyAccountant`. A draw with no
   case still steps (noise only) and is composed.

Why not Opacus's ``GradSampleModule``: its hooks (and its functorch mode, which is hook-based too)
fail on MONAI's blocks, which modify hooked outputs in place (``out += residual`` in
``UnetResBlock``, in-place LeakyReLU), with "Output 0 of BackwardHookFunction is a view and is
being modified inplace"; and ``prepare_layer`` refuses any module with buffers (SwinUNETR's
``relative_position_index``). Layers that mix the samples of a batch (BatchNorm) are refused
(:func:`check_private_model`); so is dropout, whose masks would differ between steps 1 and 2.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.func import functional_call, grad, vmap

from fedsegnet.errors import ConfigError, FedSegNetError, check_int
from fedsegnet.progress import show_progress
from fedsegnet.privacy.accountant import PrivacyAccountant, noise_for_target_epsilon
from fedsegnet.privacy.sampling import sample_rate, secret_generator
from fedsegnet.privacy.settings import DPSettings

logger = logging.getLogger(__name__)

__all__ = ["PrivateTraining", "check_private_model", "replace_batchnorm", "per_sample_gradients"]

_NORM_ALTERNATIVE = "use GroupNorm or InstanceNorm (e.g. network_kwargs norm='group' or 'instance'), or replace_batchnorm()"


def check_private_model(model: nn.Module) -> None:
    """Refuse a network DP-SGD cannot train with a per-case guarantee.

    Refused: BatchNorm (each sample's output depends on the others in the batch, so one case's
    gradient would depend on other cases), any layer Opacus's ``ModuleValidator`` refuses (e.g.
    InstanceNorm with running statistics), and dropout with ``p > 0``.

    Args:
        model: the network.

    Raises:
        ConfigError: (field ``network``) naming every refused layer, its type and the alternative.
    """
    problems = []
    for name, module in model.named_modules():
        label = f"layer {name or '<root>'!r} ({type(module).__name__})"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            problems.append(f"{label}: BatchNorm mixes the cases of a batch; {_NORM_ALTERNATIVE}")
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        problems += [f"{label}: {error}" for error in (validator(module) if validator else [])]
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            problems.append(f"{label}: dropout p={module.p} is not supported under DP; set the network's dropout to 0")
    if problems:
        raise ConfigError("network", type(model).__name__, "cannot train with DP-SGD: " + "; ".join(problems))


def replace_batchnorm(model: nn.Module, norm: str = "group") -> nn.Module:
    """A copy of ``model`` with every BatchNorm replaced (Opacus's ``ModuleValidator.fix``).

    The replacement changes the state-dict keys (no running statistics), so the server and every
    site must build the same replaced network.

    Args:
        model: the network (not modified).
        norm: ``"group"`` (GroupNorm, ``gcd(32, channels)`` groups) or ``"instance"``
            (InstanceNorm). Defaults to ``"group"``.

    Returns:
        The new network.

    Raises:
        ConfigError: naming ``norm`` when it is neither.
    """
    if norm not in ("group", "instance"):
        raise ConfigError("norm", norm, "unknown replacement", options=("group", "instance"))
    return ModuleValidator.fix(model, replace_bn_with_in=norm == "instance")


def per_sample_gradients(model: nn.Module, inputs: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients ``J_i^T b_i`` of the trainable parameters, by ``torch.func``.

    Args:
        model: the network (its parameters and buffers are used, not changed).
        inputs: ``(B, ...)`` inputs, one sample per row.
        backprops: ``(B, ...)`` gradients of the loss with respect to ``model(inputs)``.

    Returns:
        ``{parameter name: (B, *parameter shape)}`` for every parameter that requires grad;
        their sum over ``B`` is the batch gradient.
    """
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def dot(params, x, b):
        return (functional_call(model, {**fixed, **params}, (x.unsqueeze(0),)) * b.unsqueeze(0)).sum()

    return vmap(grad(dot), in_dims=(None, 0, 0), randomness="error")(trainable, inputs, backprops)


class PrivateTraining:
    """Patient-level DP-SGD at one site: the model, its optimiser and the accountant.

    Args:
        model: the site's network, in train mode (checked with :func:`check_private_model`).
        optimizer: the site's optimiser over exactly the model's trainable parameters; wrapped in
            Opacus's ``DPOptimizer`` (:attr:`optimizer`), its state kept.
        settings: the site's :class:`~fedsegnet.privacy.DPSettings` (``mode='patient'``).
        n_cases: the site's training cases, >= 1.
        cases_per_step: cases per step on average, > 0 (:func:`~fedsegnet.privacy.cases_per_step`);
            the sampling rate is :func:`~fedsegnet.privacy.sample_rate` of it.
        crops_per_case: crops of one case in a batch, >= 1 (``crops_per_volume(preset)``).
        planned_steps: the job's steps in all (rounds x local steps), >= 1; used for the noise
            when the settings give a target epsilon.
        loss_fn: ``loss_fn(logits (k, C, ...), label (k, 1, ...)) -> scalar``, applied to each case.
        noise_generator: source of the noise. Defaults to None (:func:`~fedsegnet.privacy.secret_generator`
            on the model's device).

    Raises:
        ConfigError: naming the bad setting or argument: a refused layer (``network``), settings
            with DP off (``dp``), an unreachable target (``dp_target_epsilon``), an optimiser that
            does not hold the model's trainable parameters (``optimizer``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: DPSettings,
        *,
        n_cases: int,
        cases_per_step: float,
        crops_per_case: int,
        planned_steps: int,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise_generator: torch.Generator | None = None,
    ):
        if not isinstance(settings, DPSettings) or not settings.enabled:
            raise ConfigError("dp", getattr(settings, "mode", settings), "PrivateTraining needs dp='patient' settings")
        check_private_model(model)
        self.model = model
        self.settings = settings
        self.n_cases = check_int("n_cases", n_cases, 1)
        self.crops_per_case = check_int("crops_per_case", crops_per_case, 1)
        self.planned_steps = check_int("planned_steps", planned_steps, 1)
        self.loss_fn = loss_fn
        self.sample_rate = sample_rate(cases_per_step, self.n_cases)
        self.delta = settings.delta_for(self.n_cases)
        self.noise_multiplier = settings.noise or noise_for_target_epsilon(
            settings.target_epsilon, self.delta, self.sample_rate, self.planned_steps
        )
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held != {id(p) for _, p in self._params}:
            raise ConfigError("optimizer", type(optimizer).__name__, "must hold exactly the model's trainable parameters")
        device = self._params[0][1].device
        self.accountant = PrivacyAccountant(self.delta)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=settings.clip,
            expected_batch_size=self.sample_rate * self.n_cases,
            loss_reduction="mean",
            generator=noise_generator or secret_generator(device),
            secure_mode=True,
        )
        self.optimizer.attach_step_hook(self.accountant.optimizer_hook(self.sample_rate))
        logger.info(
            "DP-SGD: %d cases, sampling rate q=%.4g, noise multiplier %.4g, clip %g, delta %.3g",
            self.n_cases, self.sample_rate, self.noise_multiplier, settings.clip, self.delta,
        )  # fmt: skip

    def step(self, batch: Mapping[str, torch.Tensor]) -> float | None:
        """One DP-SGD step on the cases of ``batch``.

        Args:
            batch: ``{"image": (n * k, C, X, Y, Z), "label": (n * k, 1, X, Y, Z)}``, the ``k =
                crops_per_case`` crops of each of the ``n`` sampled cases one case after another
                (:func:`~fedsegnet.privacy.build_case_loader`); ``n`` may be 0.

        Returns:
            The mean of the cases' losses (None when no case was drawn).

        Raises:
            ConfigError: (field ``batch``) when the crops are not a multiple of ``crops_per_case``.
        """
        image, label = (batch[key] for key in ("image", "label"))
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        k = self.crops_per_case
        if image.shape[0] % k or label.shape[0] != image.shape[0]:
            raise ConfigError(
                "batch", tuple(image.shape), f"image and label must hold the same n * {k} crops (crops_per_case={k})"
            )
        n = image.shape[0] // k
        device = self._params[0][1].device
        image = image.to(device, dtype=torch.float32)
        label = label.to(device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        if n == 0:
            for _, p in self._params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        else:
            with torch.no_grad():
                logits = self.model(image)
            logits.requires_grad_(True)
            losses = torch.stack([self.loss_fn(logits[c * k : (c + 1) * k], label[c * k : (c + 1) * k]) for c in range(n)])
            losses.sum().backward()
            grads = per_sample_gradients(self.model, image, logits.grad)
            for name, p in self._params:
                p.grad_sample = grads[name].reshape(n, k, *p.shape).sum(dim=1)
            loss = float(losses.detach().mean())
        self.optimizer.step()
        return loss

    def train_steps(self, batches, steps: int, *, should_stop=None, progress: bool | str = False, desc: str = "train (DP)") -> dict:
        """Run ``steps`` DP-SGD steps (unless stopped), as :func:`fedsegnet.training.loop.train_steps` does plain ones.

        Every step is composed by the accountant, also one that drew no case. ``should_stop()`` is
        called before every step.

        Args:
            batches: an endless iterator of case batches (``infinite_batches`` of
                :func:`~fedsegnet.privacy.build_case_loader`).
            steps: steps to run, >= 1.
            should_stop: True stops early (FLARE's abort signal). Defaults to None.
            progress: a tqdm bar (``True`` on a terminal, ``"force"`` always). Defaults to False.
            desc: the bar's and the log line's label. Defaults to ``"train (DP)"``.

        Returns:
            The keys of ``train_steps``' result (``steps``, ``loss_first``, ``loss_last``,
            ``loss_mean`` over the steps that drew a case, ``seconds``, ``voxels``, ``aborted``)
            plus ``cases_drawn``: the cases the Poisson sampler drew in all.

        Raises:
            ConfigError: for ``steps`` < 1.
            FedSegNetError: naming the step, for a non-finite loss.
        """
        steps = check_int("steps", steps, 1)
        self.model.train()
        bar = None
        if show_progress(progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
        losses, voxels, drawn, aborted, done = [], 0, 0, False, 0
        start = time.perf_counter()
        try:
            for step in range(1, steps + 1):
                if should_stop is not None and should_stop():
                    aborted = True
                    logger.info("%s: stopped before step %d/%d", desc, step, steps)
                    break
                batch = next(batches)
                loss = self.step(batch)
                done += 1
                n_crops = int(batch["image"].shape[0])
                drawn += n_crops // self.crops_per_case
                voxels += n_crops * math.prod(int(s) for s in batch["image"].shape[2:])
                if loss is not None:
                    if not math.isfinite(loss):
                        raise FedSegNetError(f"{desc}: step {step}/{steps}: loss is {loss} (non-finite); stopping")
                    losses.append(loss)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        logger.info("%s: %d DP step(s) in %.1f s, %d case(s) drawn, epsilon %.3f", desc, done, seconds, drawn, self.spent())
        return {
            "steps": done,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "loss_mean": float(sum(losses) / len(losses)) if losses else None,
            "seconds": seconds,
            "voxels": voxels,
            "aborted": aborted,
            "cases_drawn": drawn,
        }

    def report(self) -> dict:
        """What the site may publish about its privacy: ``{"epsilon", "delta", "noise_multiplier",
        "sample_rate", "clip", "steps", "budget"}`` (functions of the settings and the step count only)."""
        return {
            "epsilon": self.spent(),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "clip": self.settings.clip,
            "steps": self.accountant.steps,
            "budget": self.settings.budget or None,
        }

    def spent(self) -> float:
        """Epsilon spent at this site so far, at :attr:`delta`, over every step since the first round."""
        return self.accountant.epsilon()

    def budget_refusal(self, steps: int) -> str | None:
        """Why the next round of ``steps`` steps may not train (it would pass ``dp_budget``), or None.

        Args:
            steps: the next round's steps, >= 0.

        Returns:
            None, or one line naming the epsilon spent, the would-be epsilon and the budget.
        """
        return self.accountant.budget_refusal(self.settings.budget, steps, self.noise_multiplier, self.sample_rate)

    def state_dict(self) -> dict:
        """The accountant's state (save it with the site's state every round)."""
        return self.accountant.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved accountant state (a restarted site, ``resume_from``)."""
        self.accountant.load_state_dict(state)
