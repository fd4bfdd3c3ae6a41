"""One site's local work, without FLARE: data contract -> loaders -> model -> train rounds, evaluation.

:class:`SiteTrainer` is what the FLARE Learner wraps (``fedsegnet.flare.learner``) and what the
benchmarks time. It owns the site's model, optimiser and loaders; weights come in and go out as
plain ``dict[str, numpy.ndarray]``. Its personalisation (personal keys, Ditto, fine-tuning) is
:class:`~fedsegnet.training.personal_trainer.PersonalTraining`; the helpers here (:func:`pick_device`,
:func:`site_label_map`, :func:`eval_cases`, ...) also serve ``fedsegnet eval``
(:mod:`fedsegnet.training.evaluate_file`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from fedsegnet.config import PersonalConfig, TrainConfig, model_shape
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.labels import label_map_for
from fedsegnet.data.preflight import preflight
from fedsegnet.data.transforms import (
    build_eval_dataset,
    build_train_loader,
    case_spacing,
    infinite_batches,
)
from fedsegnet.errors import ConfigError, DataError, check_int
from fedsegnet.networks import build_network
from fedsegnet.training.evaluate import EvalResult, evaluate
from fedsegnet.training.losses import build_loss
from fedsegnet.training.personal import personalise
from fedsegnet.training.personal_trainer import PersonalTraining
from fedsegnet.training.signals import label_agreement, weak_label_agreement
from fedsegnet.training.weak_losses import WeakSupervisionLoss
from fedsegnet.training.loop import (
    load_exchanged_weights,
    make_optimizer,
    state_dict_for_exchange,
    train_steps,
)

logger = logging.getLogger(__name__)


def site_seed(seed: int, site: str) -> int:
    """A per-site seed derived from the job seed and the site name (stable across processes)."""
    return (int(seed) * 1_000_003 + zlib.crc32(site.encode("utf-8"))) % (2**31 - 1)


def pick_device(device: str | torch.device | None = None, field: str = "device") -> torch.device:
    """``device`` if given and usable on this machine, else CUDA when available, else CPU.

    Args:
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...). Defaults to None (pick).
        field: the setting that named ``device``, for the message. Defaults to ``"device"``.

    Raises:
        ConfigError: ``device`` is not a torch device or is not present here (e.g. ``cuda:7`` on a
            machine with one GPU, or any CUDA device without CUDA); names ``field`` and the
            devices there are.
    """
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(field, str(device), f"not a torch device ({e})") from None
    if dev.type == "cpu":
        return dev
    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if dev.type == "cuda":
        if not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(field, str(device), "no such CUDA device on this machine", options=available)
        return dev
    try:
        torch.zeros(1, device=dev)
    except Exception as e:  # torch raises several kinds for a device type it was not built with
        raise ConfigError(field, str(device), f"not usable on this machine ({type(e).__name__})", options=available) from None
    return dev


def build_model_for(config: TrainConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    """The network a :class:`TrainConfig` describes, for ``in_channels`` inputs and ``num_classes`` outputs."""
    p = config.preset
    return build_network(
        p.network,
        in_channels=in_channels,
        out_channels=num_classes,
        patch_size=p.patch_size,
        **dict(p.network_kwargs),
    )


def model_fit_problems(datalist, num_classes: int | None, in_channels: int | None, model: str) -> list[str]:
    """Problems (one line each, naming dataset.json and the field) where a site's data does not fit a model."""
    problems = []
    if num_classes is not None and datalist.num_classes != num_classes:
        problems.append(
            f"{datalist.root / 'dataset.json'}: field 'labels' declares {datalist.num_classes} classes "
            f"(with background) but {model} predicts num_classes={num_classes}"
        )
    if in_channels is not None and datalist.in_channels != in_channels:
        problems.append(
            f"{datalist.root / 'dataset.json'}: field 'modality' declares {datalist.in_channels} channel(s) "
            f"but {model} takes in_channels={in_channels}"
        )
    return problems


def site_label_map(datalist, preset, site: str | None = None):
    """The :class:`~fedsegnet.data.labels.LabelMap` of a site's ``dataset.json`` labels under ``preset``.

    Raises:
        DataError: naming the ``dataset.json`` and field ``labels`` when the site's labels do not
            match the preset's classes.
    """
    return label_map_for(datalist.labels, preset, where=datalist.json_path, site=site or datalist.name)


def eval_cases(cases: list[dict], dataset):
    """Yield evaluation items (image, label, spacing, name) from a dataset built by ``build_eval_dataset``."""
    for i in range(len(dataset)):
        item = dataset[i]
        name = Path(cases[i]["label"]).name
        yield {"image": item["image"], "label": item["label"], "spacing": case_spacing(item), "name": name}


class SiteTrainer(PersonalTraining):
    """Local training and evaluation of one site.

    Args:
        site_dir: folder holding the site's ``dataset.json``.
        config: the resolved training configuration.
        site: site name used in messages and for the per-site seed. Defaults to the folder name.
        num_classes: classes the federation's model predicts (including background). Defaults to
            None (take it from the site's ``dataset.json``); when given, the site's labels must match.
        in_channels: image channels the model takes. Defaults to None (from ``dataset.json``).
        device: torch device string. Defaults to None (CUDA when available, else CPU).
        progress: show tqdm bars. Defaults to False.
        run_preflight: check every file before training. Defaults to True.
        agreement_batches: training batches on which the received global model's predictions are
            compared with the site's labels each round (AAM's data-quality signal; 0 = off).
            Defaults to 2.
        proximal_loss: ``proximal_loss(local_model, global_model) -> scalar`` added to every
            training step, e.g. FedProx's ``PTFedProxLoss(mu)`` from FLARE. Defaults to None.
        weak_loss: keyword arguments of :class:`~fedsegnet.training.weak_losses.WeakSupervisionLoss`
            for a site whose ``dataset.json`` declares weaker labels (``threshold``,
            ``ramp_rounds``, ...). Defaults to None (its defaults). Voxel sites train with DiceCE.
        personal: how the site personalises the model (:class:`~fedsegnet.config.PersonalConfig`).
            Defaults to None (no personalisation).
        personal_dir: folder of the site's personal state file ``<site>.pt``
            (:class:`~fedsegnet.training.personal.PersonalStore`), loaded here when present and
            written after every round. Defaults to None (kept in memory only).
        dp: the site's differential privacy (:class:`~fedsegnet.privacy.DPSettings`); with
            ``dp='patient'`` every round trains with patient-level DP-SGD
            (:class:`~fedsegnet.privacy.site.SitePrivacy`), the agreement signal is off (it would
            be computed from the training cases outside the accountant) and :attr:`privacy`
            holds the accountant. Defaults to None (no DP).
        planned_rounds: the rounds the job plans (with ``local_steps``, the steps a
            ``dp_target_epsilon`` is spread over), >= 1. Defaults to 1.
        privacy_file: the site's privacy state file (the accountant, read when present, written
            after every round). Defaults to None (kept in memory only).

    Label kinds: a ``box`` or ``tag`` site's loss uses the received global model's predictions on
    each crop as pseudo-labels (one extra forward pass per step); a ``partial`` site uses the
    marginal and exclusion losses, plus the global model's pseudo-labels for its unannotated
    classes on its label-0 voxels. Validation uses only cases with voxel labels (a box or tag site
    without such cases reports None). The AAM agreement signal is the received global model's Dice
    against the site's labels (a ``partial`` site: its annotated classes only), or for box and tag
    sites :func:`~fedsegnet.training.signals.weak_label_agreement`.

    Raises:
        DataError: when the site's data contract or files fail the checks; lists every problem.
    """

    def __init__(
        self,
        site_dir: str | Path,
        config: TrainConfig,
        *,
        site: str | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        device: str | None = None,
        progress: bool = False,
        run_preflight: bool = True,
        agreement_batches: int = 2,
        proximal_loss=None,
        weak_loss: dict | None = None,
        personal: PersonalConfig | None = None,
        personal_dir: str | Path | None = None,
        dp=None,
        planned_rounds: int = 1,
        privacy_file: str | Path | None = None,
    ):
        self.site_dir = Path(site_dir)
        self.config = config
        self.site = site or self.site_dir.name
        self.progress = progress
        self.agreement_batches = int(agreement_batches)
        self.proximal_loss = proximal_loss
        self._global_model = None  # frozen copy of the received global model (proximal term only)
        self.datalist = load_datalist(self.site_dir, site=self.site)
        problems = []
        if config.preset.is_dataset:
            num_classes, in_channels = model_shape(config.preset, num_classes, in_channels)
        try:
            self.label_map = site_label_map(self.datalist, config.preset, self.site)
        except DataError as e:  # reported with the other problems below
            problems += e.problems
        model = f"the job's model (preset {config.preset.name!r})"
        problems += model_fit_problems(self.datalist, num_classes, in_channels, model)
        if problems:
            raise DataError(self.site, problems)
        self.summary = preflight(self.datalist) if run_preflight else {}
        self.num_classes = self.datalist.num_classes
        self.in_channels = self.datalist.in_channels
        self.seed = site_seed(config.seed, self.site)
        self.device = pick_device(device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(self.seed)
        self.model = build_model_for(config, self.in_channels, self.num_classes).to(self.device)
        kind = self.datalist.label_kind
        # model class ids of the foreground classes this site annotates (all but at a partial site)
        self.annotated_classes = sorted(self.label_map.class_of[v] for v in self.datalist.annotated)
        if kind == "voxel":
            self.loss_fn = build_loss("dice_ce")
        else:
            self.loss_fn = WeakSupervisionLoss(kind, self.num_classes, annotated=self.annotated_classes, **(weak_loss or {}))
        self.optimizer = make_optimizer(self.model, lr=config.preset.lr, weight_decay=config.preset.weight_decay)
        self.scaler = (
            torch.amp.GradScaler("cuda") if (config.preset.amp and self.device.type == "cuda") else None
        )
        self._batches = None
        self._eval_sets = {}
        self.rounds_done = 0
        self._init_personal(personal or PersonalConfig(), personal_dir)
        self.privacy = None
        if dp is not None and dp.enabled:
            self._init_privacy(dp, planned_rounds, privacy_file)

    def _init_privacy(self, dp, planned_rounds: int, privacy_file) -> None:
        """Patient-level DP-SGD for every round (:class:`~fedsegnet.privacy.site.SitePrivacy`)."""
        from fedsegnet.privacy.site import SitePrivacy, refuse_unsupported  # Opacus only where DP is on

        refuse_unsupported(
            self.site, label_kind=self.datalist.label_kind, proximal=self.proximal_loss is not None,
            personal_method=self.personal.method, boundary=self.boundary_loss is not None,
        )  # fmt: skip
        self.agreement_batches = 0
        self.privacy = SitePrivacy(
            self.site, dp, self.model, self.optimizer, self.loss_fn, self.datalist.training, self.config.preset,
            self.num_classes, self.in_channels, seed=self.seed,
            planned_steps=check_int("planned_rounds", planned_rounds, 1) * self.config.local_steps,
            state_file=privacy_file, label_map=self.label_map,
        )  # fmt: skip
        self.optimizer = self.privacy.optimizer

    @property
    def n_train(self) -> int:
        """Number of training cases of the site."""
        return len(self.datalist.training)

    @property
    def n_val(self) -> int:
        """Number of validation cases of the site."""
        return len(self.datalist.validation)

    def _train_batches(self):
        if self._batches is None:
            preset = self.config.preset
            if self.datalist.label_kind == "tag":  # no voxel is known to be foreground: uniform crops
                preset = dataclasses.replace(preset, pos_fraction=0.0)
            loader = build_train_loader(
                self.datalist.training, preset, self.num_classes, seed=self.seed,
                label_map=self.label_map,
            )  # fmt: skip
            self._batches = infinite_batches(loader)
        return self._batches

    def get_weights(self) -> dict[str, np.ndarray]:
        """The site model's weights as float32 numpy arrays, exchange keys (no wrapper prefixes)."""
        return {k: v.numpy() for k, v in state_dict_for_exchange(self.model).items()}

    def set_weights(self, weights: dict) -> None:
        """Load exchanged weights (numpy arrays or tensors) into the site model; the dict is not changed."""
        load_exchanged_weights(self.model, weights, strict=True)

    def train_round(self, global_weights: dict, should_stop=None, round: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Run one round of local training from ``global_weights``.

        With personal keys (``fedbn``, ``dca``, ``personal_keys``), the site's own values of those
        keys are loaded over the received ones, and the update leaves them out: they never leave
        the site. With ``ditto`` the site's personal model then trains too. The personal state is
        saved afterwards (when the trainer has a ``personal_dir``).

        Args:
            global_weights: the received global model, ``{name: array}``.
            should_stop: callable returning True to abort between steps. Defaults to None.
            round: the federation's round (pseudo-label ramp-up of weak-label sites). Defaults to
                None (the rounds this trainer has run).

        Returns:
            ``(update, stats)``: ``update[k] = local[k] - global[k]`` (float32 numpy, same shapes as
            the global weights) for every shared key and the loop statistics (steps, losses,
            seconds, voxels, aborted), plus ``agreement``: the received global model's label
            agreement on this site's training crops (None when off or when no foreground was
            seen) and, with ``ditto``, ``personal_loss_mean``; with DP, ``dp`` (the privacy
            report after the round) and ``cases_drawn``.

        Raises:
            PrivacyBudgetSpent: (:mod:`fedsegnet.privacy.site`) with DP, when this round's steps
                would pass ``dp_budget``; nothing is trained or changed.
        """
        round = self.rounds_done if round is None else int(round)
        if self.privacy is not None:
            self.privacy.check_budget(self.config.local_steps)  # PrivacyBudgetSpent: this round does not train
        self.set_weights(personalise(global_weights, self._personal))
        agreement = None
        kind = self.datalist.label_kind
        if self.agreement_batches and kind in ("box", "tag"):
            agreement = weak_label_agreement(
                self.model, self._train_batches(), kind=kind, num_classes=self.num_classes, device=self.device,
                n_batches=self.agreement_batches,
            )  # fmt: skip
        elif self.agreement_batches:
            agreement = label_agreement(
                self.model, self._train_batches(), num_classes=self.num_classes, device=self.device,
                n_batches=self.agreement_batches, classes=None if kind == "voxel" else self.annotated_classes,
            )  # fmt: skip
        regularizer = None
        needs_teacher = getattr(self.loss_fn, "needs_teacher", False)
        if self.proximal_loss is not None or needs_teacher or self.personal.method == "ditto":
            self._load_global_copy(global_weights)
        if self.proximal_loss is not None:
            reference = self._global_model
            regularizer = lambda model: self.proximal_loss(model, reference)  # noqa: E731
        stats = self._train(self.model, self.optimizer, self.config.local_steps, round, should_stop, regularizer,
                            desc=f"{self.site} round {round}")  # fmt: skip
        stats["agreement"] = agreement
        local = self.get_weights()
        self._personal = {k: torch.from_numpy(local[k]) for k in self.personal_keys}
        update = {}
        for k, v in local.items():
            if k in self._personal:
                continue
            g = global_weights[k]
            g = g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
            update[k] = (v - g.astype(np.float32, copy=False)).astype(np.float32, copy=False)
        if self.personal.method == "ditto" and not stats["aborted"]:
            stats["personal_loss_mean"] = self.train_ditto(round, should_stop)["loss_mean"]
        self.rounds_done = round + 1
        self._save_personal(round)
        return update, stats

    def _load_global_copy(self, global_weights: dict) -> None:
        """A frozen copy of the received global model (teacher, proximal and Ditto reference)."""
        if self._global_model is None:
            self._global_model = copy.deepcopy(self.model).requires_grad_(False)
        load_exchanged_weights(self._global_model, personalise(global_weights, self._personal), strict=True)
        self._global_model.eval()

    def _train(self, model, optimizer, steps: int, round: int, should_stop, regularizer, desc: str) -> dict:
        """``train_steps`` with this site's loss, weak-label extras and boundary loss (or DP-SGD steps)."""
        if self.privacy is not None and model is self.model:
            return self.privacy.train(steps, round, should_stop=should_stop, progress=self.progress, desc=desc + " (DP)")
        kind = self.datalist.label_kind
        extras = None
        if kind != "voxel":
            extras = self._weak_extras(round, getattr(self.loss_fn, "needs_teacher", False))
        return train_steps(
            model,
            self._train_batches(),
            steps=steps,
            optimizer=optimizer,
            loss_fn=self.loss_fn,
            device=self.device,
            amp=self.config.preset.amp,
            scaler=self.scaler,
            should_stop=should_stop,
            progress=self.progress,
            desc=desc,
            regularizer=regularizer,
            loss_extras=extras,
            extra_loss=self.boundary_loss,
        )

    def _weak_extras(self, round: int, needs_teacher: bool):
        """``loss_extras`` for a weak-label site: the batch's tags and the global model's logits."""
        teacher = self._global_model

        def extras(batch, image):
            out = {"round": round}
            if "tags" in batch:
                out["tags"] = torch.as_tensor(batch["tags"]).to(self.device, dtype=torch.float32)
            if needs_teacher:
                with torch.no_grad():
                    out["teacher"] = teacher(image).float()
            return out

        return extras

    def evaluate(self, weights: dict | None = None, split: str = "validation", max_cases: int | None = None) -> EvalResult:
        """Evaluate ``weights`` (or the current local model) on one split of the site.

        The site's local model is left as it was: evaluating other weights restores it afterwards.

        Args:
            weights: weights to evaluate. Defaults to None (the site's current model).
            split: ``"validation"``, ``"training"`` or ``"test"``. Defaults to ``"validation"``.
            max_cases: evaluate at most this many cases (0 = all). Defaults to None (the config's
                ``val_max_cases``).

        Returns:
            The :class:`EvalResult` with Dice and HD95 (mm) per class.
        """
        max_cases = self.config.val_max_cases if max_cases is None else max_cases
        key = (split, max_cases)
        if key not in self._eval_sets:
            cases = self.datalist.evaluable(split)[: max_cases or None]  # weak-label cases cannot be scored
            self._eval_sets[key] = (cases, build_eval_dataset(cases, self.config.preset, label_map=self.label_map))
        cases, dataset = self._eval_sets[key]
        saved = None
        if weights is not None:
            saved = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.set_weights(weights)
        try:
            p = self.config.preset
            return evaluate(
                self.model,
                eval_cases(cases, dataset),
                num_classes=self.num_classes,
                roi_size=p.patch_size,
                sw_batch_size=p.sw_batch_size,
                overlap=p.sw_overlap,
                device=self.device,
                amp=p.amp,
                class_names=self.label_map.class_names,
                regions=self.label_map.regions if self.datalist.label_kind != "partial" else None,
                score_classes=self.annotated_classes if self.datalist.label_kind == "partial" else None,
                progress=self.progress,
            )
        finally:
            if saved is not None:
                self.model.load_state_dict(saved)
