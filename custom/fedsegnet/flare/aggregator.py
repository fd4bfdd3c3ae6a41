"""Server aggregator: the Adaptive Aggregation Mechanism (and the robust baselines) as a FLARE ``ModelAggregator``.

Why ``ModelAggregator``: it is FLARE's ``Aggregator`` (``accept``/``aggregate``/``reset``, what
``ScatterAndGather`` calls in ``jobs/fedsegnet``) with the ``FLModel`` interface
(``accept_model``/``aggregate_model``/``reset_stats``) that FLARE's ``FedAvg`` controller and its
Recipe API take as ``aggregator=``. One class serves both workflows; the round itself (gate,
shared keys, method, clipping, combination, record) is :class:`fedsegnet.aggregation.ServerRound`,
the one the in-process federation runs.

Each accepted update is kept as it arrived (:class:`~fedsegnet.aggregation.CompactUpdate`: the
decoded top-k update stays sparse, about 30% of a dense copy at ratio 0.1, or packed as received);
aggregation reads one tensor of every site at a time. The values at the divergence sample are read
at ``accept``, from the decode the decoder's check made, which is then released. Dense (uncompressed) updates must be kept whole until the round
ends: the robust centre and the divergence signals need all of them, which an in-time running sum
cannot give. Updates with the wrong names or shapes or with NaN/Inf are refused at ``accept``
(logged with the site and the reason); the norm rule of the gate runs when the round is complete.

The keys that stay at the sites (personalisation) are the job's, computed here from the server's
own job args ``personalization`` and ``personal_keys`` and the network the persistor built
(:func:`personal_key_names`, the function the sites use), never from what a site declares: a site
that declares or sends another set is refused, and the other sites' updates are judged on their
own. ``jobs/fedavg`` gets the same rule through :class:`SharedKeysWeightedAggregator`.

Per round: one log line per site (signals, weight, gate decision); the record is handed to
``RoundRecorder`` (event :data:`~fedsegnet.flare.constants.AAM_RECORD_EVENT`), which writes it
into ``fedsegnet_rounds.jsonl`` and TensorBoard. The AAM state (signal history) is saved with the
global model by ``SegModelPersistor`` and restored from it.
"""

from __future__ import annotations

import threading

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from fedsegnet.aggregation import AdaptiveAggregation, CompactUpdate, ServerRound, check_personal_keys
from fedsegnet.compression.codec import SparseTensor
from fedsegnet.compression.packed import PackedTensor
from fedsegnet.config import PersonalConfig, check_job_args
from fedsegnet.flare.constants import AAM_RECORD_EVENT, AAM_RECORD_PROP, UpdateMeta

_REPORT_KEYS = {
    "n_train": UpdateMeta.N_TRAIN,
    "label_kind": UpdateMeta.LABEL_KIND,
    "agreement": UpdateMeta.LABEL_AGREEMENT,
    "val_dice_global": UpdateMeta.VAL_DICE_GLOBAL,
    "val_dice_local": UpdateMeta.VAL_DICE_LOCAL,
}


# the constructor arguments passed on unchanged to AdaptiveAggregation
_AAM_ARGS = (
    "temperature", "quality_coef", "performance_coef", "divergence_coef", "norm_coef", "margin", "cos_margin",
    "min_signal", "norm_margin", "floor", "cap", "smoothing", "clip_norm", "centre", "max_norm_ratio", "max_cases",
    "peer_cases_ratio", "norm_window", "norm_growth", "leave_one_out", "min_similarity",
)  # fmt: skip


class JobPersonalKeys:
    """The parameter names the job keeps at the sites, computed on the server from its own job args.

    Args:
        personalization: the job's method (:data:`fedsegnet.config.PERSONALIZATION`).
        personal_keys: the job's extra fnmatch patterns.
        persistor_id: the component holding the network (its ``model``), needed unless the job
            keeps nothing at the sites.

    Raises:
        ConfigError: an unknown method or bad patterns (named).
    """

    def __init__(self, personalization: str = "none", personal_keys=(), persistor_id: str = "persistor"):
        self.config = PersonalConfig(method=personalization, personal_keys=tuple(personal_keys or ()))
        self.persistor_id = persistor_id
        self._keys: frozenset | None = None if self.config.method in ("fedbn", "dca") or self.config.personal_keys else frozenset()

    def get(self, fl_ctx: FLContext | None) -> tuple[frozenset | None, str]:
        """``(keys, "")``, or ``(None, reason)`` when the network is not available or does not fit."""
        if self._keys is not None:
            return self._keys, ""
        from fedsegnet.training.personal import personal_key_names

        engine = fl_ctx.get_engine() if fl_ctx is not None else None
        holder = engine.get_component(self.persistor_id) if engine is not None else None
        model = getattr(holder, "model", None)
        if model is None:
            return None, f"the job keeps personal keys but component {self.persistor_id!r} holds no network to find them in"
        try:
            self._keys = frozenset(personal_key_names(model, self.config))
        except Exception as e:  # a job whose personalisation does not fit its network
            return None, f"personalization={self.config.method!r}, personal_keys={list(self.config.personal_keys)}: {e}"
        return self._keys, ""


def _global_weights(fl_ctx: FLContext | None) -> dict | None:
    learnable = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL) if fl_ctx is not None else None
    weights = learnable.get("weights") if learnable is not None else None
    return weights or None


class AAMAggregator(ModelAggregator):
    """Aggregate site updates with AAM weights, a robust centre, or FedAvg weights.

    Args:
        method: ``"aam"``, ``"mean"`` (sample-count weights, FedAvg), ``"median"`` or
            ``"trimmed_mean"`` (coordinate-wise). Every method passes the hard gate first.
            Defaults to ``"aam"``.
        temperature, quality_coef, performance_coef, divergence_coef, norm_coef, margin, cos_margin,
            min_signal, norm_margin, floor, cap, smoothing, clip_norm, centre, max_norm_ratio, max_cases,
            peer_cases_ratio, norm_window, norm_growth, leave_one_out, min_similarity: see
            :class:`fedsegnet.aggregation.AdaptiveAggregation` (same defaults). The gate (with the
            history of reference norms) runs for every method, the peer bound of case counts for
            ``"aam"`` and ``"mean"``; clipping and weights are AAM's.
        trimmed_beta: share trimmed at each end for ``"trimmed_mean"``. Defaults to 0.25.
        personalization: the job's personalisation method, as the sites' job arg of that name
            (the keys it keeps at the sites are computed here, never taken from a site).
            Defaults to ``"none"``.
        personal_keys: the sites' extra personal-key patterns, as their job arg. Defaults to ().
        persistor_id: the component whose ``model`` the personal keys are found in. Defaults to
            ``"persistor"``.
    """

    def __init__(
        self,
        method: str = "aam",
        temperature: float = 0.2,
        quality_coef: float = 1.0,
        performance_coef: float = 1.0,
        divergence_coef: float = 1.0,
        norm_coef: float = 1.0,
        margin: float = 0.3,
        cos_margin: float = 0.7,
        min_signal: float = 0.1,
        norm_margin: float = 1.5,
        floor: float = 0.02,
        cap: float = 0.6,
        smoothing: float = 0.5,
        clip_norm: float = 1.5,
        centre: str = "trimmed_mean",
        max_norm_ratio: float = 10.0,
        max_cases: float = 100_000,
        trimmed_beta: float = 0.25,
        peer_cases_ratio: float = 2.0,
        norm_window: int = 5,
        norm_growth: float = 2.0,
        leave_one_out: bool = True,
        min_similarity: float = 0.2,
        personalization: str = "none",
        personal_keys=(),
        persistor_id: str = "persistor",
    ):
        super().__init__()
        check_job_args(
            dict(aggregation=method, aam_temperature=temperature, aam_floor=floor, aam_cap=cap,
                 aam_peer_cases_ratio=peer_cases_ratio, personalization=personalization, personal_keys=list(personal_keys or ()))
        )  # fmt: skip
        aam_args = {k: v for k, v in locals().items() if k in _AAM_ARGS}
        given = {"method": method, "trimmed_beta": trimmed_beta, "personalization": personalization,
                 "personal_keys": list(personal_keys or ()), "persistor_id": persistor_id, **aam_args}  # fmt: skip
        for name, value in given.items():
            setattr(self, name, value)  # each constructor argument kept under its own name (FLARE's job export reads them)
        self.aam = AdaptiveAggregation(**aam_args)
        self.server = ServerRound(method, self.aam, trimmed_beta)  # the round the in-process federation runs too
        self.job_personal = JobPersonalKeys(personalization, personal_keys, persistor_id)
        self._lock = threading.Lock()
        self._updates: dict[str, CompactUpdate] = {}
        self._reports: dict[str, dict] = {}
        self._refused: dict[str, str] = {}
        self._checked: dict[str, dict] = {}
        self._round = None

    # ----------------------------------------------------------------------------- state (persistor)
    def state_dict(self) -> dict:
        """The AAM signal history (saved with the global model)."""
        return self.aam.state_dict()

    def load_state_dict(self, state) -> None:
        """Restore the AAM signal history saved with a global model."""
        self.aam.load_state_dict(state)

    # ----------------------------------------------------------------------------- accept
    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Called by ``ScatterAndGather``: the site comes from the peer context."""
        self.fl_ctx = fl_ctx
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name(default="?") if peer is not None else "?"
        made_for, current = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND), fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if made_for is not None and current is not None and made_for != current:  # a result FLARE let through after its round
            self.log_warning(fl_ctx, f"update of site {site} refused as late: made in round {made_for}, the server is in round {current}")
            return False
        try:  # not FLModelUtils.from_shareable: it refuses the float INITIAL_METRICS LearnerExecutor puts in the meta
            dxo = from_shareable(shareable)
        except Exception as e:  # a malformed contribution is refused, never raised into the workflow
            self.log_error(fl_ctx, f"update of site {site} refused: not a DXO ({type(e).__name__}: {e})")
            return False
        params_type = {DataKind.WEIGHT_DIFF: ParamsType.DIFF, DataKind.WEIGHTS: ParamsType.FULL}.get(dxo.data_kind)
        if params_type is None:
            self.log_error(fl_ctx, f"update of site {site} refused: data kind {dxo.data_kind} (expected WEIGHT_DIFF or WEIGHTS)")
            return False
        model = FLModel(
            params_type=params_type, params=dxo.data, meta=dict(dxo.meta or {}, client_name=site),
            current_round=shareable.get_header(AppConstants.CURRENT_ROUND),
        )  # fmt: skip
        return self.accept_model(model)

    def accept_model(self, model: FLModel) -> bool:
        """Keep one site's update (``DIFF``, or ``FULL`` weights turned into a difference).

        Returns:
            False (logged with the site and the reason) when the update cannot be aggregated.
        """
        meta = dict(model.meta or {})
        site = str(meta.get("client_name", "?"))
        reference = _global_weights(self.fl_ctx)
        params = model.params or {}
        reason = ""
        if not isinstance(params, dict) or not params:
            reason = "no parameters"
        elif model.params_type == ParamsType.FULL:
            if reference is None:
                reason = "full weights sent but the server holds no global model to take the difference to"
            elif set(params) == set(reference):
                params = {k: np.asarray(v.to_dense() if isinstance(v, (SparseTensor, PackedTensor)) else v, dtype=np.float32)
                          - np.asarray(reference[k], dtype=np.float32) for k, v in params.items()}  # fmt: skip
        elif model.params_type not in (ParamsType.DIFF, None):
            reason = f"params_type {model.params_type} (expected DIFF or FULL)"
        expected = shapes = None
        if not reason:  # the keys the job keeps at the sites: the server's own rule, never the site's word
            expected, reason = self.job_personal.get(self.fl_ctx)
        if not reason:
            shapes = self.server.shared_shapes(reference, expected) if reference is not None else None
            try:  # the divergence sample read now, from the decoder's check (one decode fewer in the round)
                update = CompactUpdate(params, sample=self.server.sample_positions(shapes) if shapes is not None else None)
            except Exception as e:
                reason = f"unreadable parameters ({type(e).__name__}: {e})"
        if not reason:  # personal keys, names, shapes, NaN/Inf: the round's own checks, once per update
            full = reference if reference is not None else {k: update.shape(k) for k in update}
            reason = self.server.check(update, full, expected, declared=meta.get(UpdateMeta.PERSONAL_KEYS))
        with self._lock:
            if not reason and site in self._updates:
                reason = "a second update in the same round"
            if reason:
                self._refused[site] = reason
                self._log("error", f"update of site {site} refused: {reason}; the round goes on without it")
                return False
            self._updates[site] = update
            if shapes is not None:  # checked against the global model: the round applies only the norm rule
                self._checked[site] = shapes
            self._reports[site] = {key: meta.get(meta_key) for key, meta_key in _REPORT_KEYS.items()}
            if self._round is None:
                self._round = model.current_round
        return True

    # ----------------------------------------------------------------------------- aggregate
    def aggregate_model(self) -> FLModel:
        """Combine the round's accepted updates; an empty ``DIFF`` (no change) when none passed."""
        with self._lock:
            updates, reports, refused, checked, rnd = self._updates, self._reports, self._refused, self._checked, self._round
            self._updates, self._reports, self._refused, self._checked, self._round = {}, {}, {}, {}, None
        fl_ctx = self.fl_ctx
        if rnd is None and fl_ctx is not None:
            rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reference = _global_weights(fl_ctx)
        if reference is None and updates:
            first = next(iter(updates.values()))
            reference = {k: first.shape(k) for k in first}
        # personalisation: the round aggregates the keys the job shares (the updates were checked at accept)
        expected = (self.job_personal.get(fl_ctx)[0] or frozenset()) if updates else frozenset()
        result = self.server.round(updates, reports, reference or {}, round=rnd, expected_personal=expected,
                                   refused=refused, checked=checked)  # fmt: skip
        record, combined = result.record, result.update
        for site, r in sorted(record["sites"].items()):
            self._log("info", _site_line(rnd, site, r))
        if combined is None:
            self._log("warning", f"round {rnd}: no update passed the gate; the global model stays as it is")
            combined = {}
        self._publish(record)
        return FLModel(params_type=ParamsType.DIFF, params=combined, current_round=rnd)

    def reset_stats(self):
        with self._lock:
            self._updates, self._reports, self._refused, self._checked, self._round = {}, {}, {}, {}, None

    # ----------------------------------------------------------------------------- helpers
    def _log(self, level: str, message: str):
        if self.fl_ctx is not None:
            getattr(self, f"log_{level}")(self.fl_ctx, message)

    def _publish(self, record: dict):
        fl_ctx = self.fl_ctx
        if fl_ctx is None:
            return
        fl_ctx.set_prop(AAM_RECORD_PROP, record, private=True, sticky=False)
        self.fire_event(AAM_RECORD_EVENT, fl_ctx)


class SharedKeysWeightedAggregator(InTimeAccumulateWeightedAggregator):
    """FLARE's ``InTimeAccumulateWeightedAggregator`` (``jobs/fedavg``) that takes only the keys the job shares.

    The keys that stay at the sites come from the server's own job args (as in
    :class:`AAMAggregator`); a contribution that declares or sends another set is refused (logged)
    before FLARE's aggregator sees it, so it can neither update a key the sites keep nor change
    what the others' updates are judged against. Everything else is FLARE's.

    Args:
        expected_data_kind: as FLARE's. Defaults to ``"WEIGHT_DIFF"``.
        personalization: the job's personalisation method. Defaults to ``"none"``.
        personal_keys: the job's extra personal-key patterns. Defaults to ().
        persistor_id: the component holding the network. Defaults to ``"persistor"``.
    """

    def __init__(self, expected_data_kind: str = "WEIGHT_DIFF", personalization: str = "none", personal_keys=(),
                 persistor_id: str = "persistor"):  # fmt: skip
        super().__init__(expected_data_kind=expected_data_kind)
        check_job_args(dict(personalization=personalization, personal_keys=list(personal_keys or ())))
        self.personalization, self.personal_keys, self.persistor_id = personalization, list(personal_keys or ()), persistor_id
        self.job_personal = JobPersonalKeys(personalization, personal_keys, persistor_id)

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name(default="?") if peer is not None else "?"
        expected, reason = self.job_personal.get(fl_ctx)
        if not reason:
            try:
                dxo = from_shareable(shareable)
                reason = check_personal_keys(dxo.get_meta_prop(UpdateMeta.PERSONAL_KEYS), expected, dxo.data or {})
            except Exception as e:
                reason = f"not a DXO ({type(e).__name__}: {e})"
        if reason:
            self.log_error(fl_ctx, f"update of site {site} refused: {reason}; the round goes on without it")
            return False
        return super().accept(shareable, fl_ctx)


def _site_line(rnd, site: str, r: dict) -> str:
    def f(key, fmt="{:.3f}"):
        v = r.get(key)
        return "n/a" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))

    if not r.get("accepted"):
        return f"round {rnd} {site}: dropped ({r.get('gate')})"
    return (
        f"round {rnd} {site}: weight {f('weight')} (prior {f('prior')}) quality {f('quality')} "
        f"val Dice local {f('performance')} cos-dist {f('cos_dist')} norm-ratio {f('norm_ratio', '{:.2f}')} "
        f"clip {f('clip', '{:.2f}')} kind {r.get('label_kind', 'n/a')}"
    )


def aggregation_for(fl_ctx: FLContext, aggregator_id: str = "aggregator"):
    """The job's aggregator component if it keeps AAM state (for the persistor), else None."""
    engine = fl_ctx.get_engine() if fl_ctx is not None else None
    component = engine.get_component(aggregator_id) if engine is not None else None
    return component if isinstance(component, AAMAggregator) else None
