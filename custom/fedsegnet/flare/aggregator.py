"""Server aggregator: the Adaptive Aggregation Mechanism (and the robust baselines) as a FLARE ``ModelAggregator``.

Why ``ModelAggregator``: it is FLARE's ``Aggregator`` (``accept``/``aggregate``/``reset``, what
``ScatterAndGather`` calls in ``jobs/fedsegnet``) with the ``FLModel`` interface
(``accept_model``/``aggregate_model``/``reset_stats``) that FLARE's ``FedAvg`` controller and its
Recipe API take as ``aggregator=``. One class serves both workflows; the math lives in
:mod:`fedsegnet.aggregation`.

Each accepted update is kept as it arrived (:class:`~fedsegnet.aggregation.CompactUpdate`: the
decoded top-k update stays sparse, about 30% of a dense copy at ratio 0.1); aggregation reads one
tensor of every site at a time. Dense (uncompressed) updates must be kept whole until the round
ends: the robust centre and the divergence signals need all of them, which an in-time running sum
cannot give. Updates with the wrong names or shapes or with NaN/Inf are refused at ``accept``
(logged with the site and the reason); the norm rule of the gate runs when the round is complete.

Per round: one log line per site (signals, weight, gate decision); the record is handed to
``RoundRecorder`` (event :data:`~fedsegnet.flare.constants.AAM_RECORD_EVENT`), which writes it
into ``fedsegnet_rounds.jsonl`` and TensorBoard. The AAM state (signal history) is saved with the
global model by ``SegModelPersistor`` and restored from it.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from fedsegnet.aggregation import (
    METHODS,
    AdaptiveAggregation,
    CompactUpdate,
    aggregate_mean,
    aggregate_median,
    aggregate_trimmed_mean,
    gate_updates,
    shared_reference,
)
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
)  # fmt: skip


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
            min_signal, norm_margin, floor, cap, smoothing, clip_norm, centre, max_norm_ratio, max_cases: see
            :class:`fedsegnet.aggregation.AdaptiveAggregation` (same defaults).
        trimmed_beta: share trimmed at each end for ``"trimmed_mean"``. Defaults to 0.25.
    """

    def __init__(
        self,
        method: str = "aam",
        temperature: float = 0.05,
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
        clip_norm: float = 2.0,
        centre: str = "trimmed_mean",
        max_norm_ratio: float = 10.0,
        max_cases: float = 100_000,
        trimmed_beta: float = 0.25,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method={method!r}: unknown (valid: {', '.join(METHODS)})")
        aam_args = {k: v for k, v in locals().items() if k in _AAM_ARGS}
        for name, value in {"method": method, "trimmed_beta": trimmed_beta, **aam_args}.items():
            setattr(self, name, value)  # each constructor argument kept under its own name (FLARE's job export reads them)
        self.aam = AdaptiveAggregation(**aam_args)
        self._lock = threading.Lock()
        self._updates: dict[str, CompactUpdate] = {}
        self._reports: dict[str, dict] = {}
        self._refused: dict[str, str] = {}
        self._personal: dict[str, frozenset] = {}  # site -> names of the keys it keeps to itself
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
                params = {k: np.asarray(v, dtype=np.float32) - np.asarray(reference[k], dtype=np.float32) for k, v in params.items()}
        elif model.params_type not in (ParamsType.DIFF, None):
            reason = f"params_type {model.params_type} (expected DIFF or FULL)"
        if not reason:
            try:
                update = CompactUpdate(params)
            except Exception as e:
                reason = f"unreadable parameters ({type(e).__name__}: {e})"
        personal = meta.get(UpdateMeta.PERSONAL_KEYS) or []
        if not reason:  # keys the site keeps to itself are not in its update
            shapes, reason = shared_reference(reference if reference is not None else {k: update.shape(k) for k in update}, personal)
        if not reason:
            decision = gate_updates({site: update}, shapes, max_norm_ratio=self.max_norm_ratio)[site]
            reason = decision.reason
        with self._lock:
            if not reason and site in self._updates:
                reason = "a second update in the same round"
            if reason:
                self._refused[site] = reason
                self._log("error", f"update of site {site} refused: {reason}; the round goes on without it")
                return False
            self._updates[site] = update
            self._personal[site] = frozenset(personal)
            self._reports[site] = {key: meta.get(meta_key) for key, meta_key in _REPORT_KEYS.items()}
            if self._round is None:
                self._round = model.current_round
        return True

    # ----------------------------------------------------------------------------- aggregate
    def aggregate_model(self) -> FLModel:
        """Combine the round's accepted updates; an empty ``DIFF`` (no change) when none passed."""
        with self._lock:
            updates, reports, refused, rnd = self._updates, self._reports, self._refused, self._round
            personal = self._personal
            self._updates, self._reports, self._refused, self._round, self._personal = {}, {}, {}, None, {}
        fl_ctx = self.fl_ctx
        if rnd is None and fl_ctx is not None:
            rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reference = _global_weights(fl_ctx)
        if reference is None and updates:
            first = next(iter(updates.values()))
            reference = {k: first.shape(k) for k in first}
        if updates and any(personal.values()):
            # personalisation: the round aggregates the keys the sites share; a site that keeps
            # another set than most is refused by the gate (missing or extra keys)
            kept_local = Counter(personal.values()).most_common(1)[0][0]
            reference = {k: v for k, v in reference.items() if k not in kept_local}
        record = {"round": rnd, "method": self.method, "sites": {s: {"accepted": False, "gate": r, "weight": 0.0} for s, r in refused.items()}}
        combined = None
        if updates:
            if self.method == "aam":
                result = self.aam.aggregate(updates, reports, reference, round=rnd)
                combined = result.update
                record["sites"].update(result.sites)
            else:
                decisions = gate_updates(updates, reference, max_norm_ratio=self.max_norm_ratio)
                kept = [s for s in updates if decisions[s].accepted]
                for s, d in decisions.items():
                    record["sites"][s] = {"accepted": d.accepted, "gate": d.reason or "accepted", "norm": d.norm, "weight": 0.0, **reports[s]}
                if kept:
                    ups = [updates[s] for s in kept]
                    if self.method == "mean":
                        n = np.array([max(1.0, float(reports[s].get("n_train") or 1)) for s in kept])
                        combined = aggregate_mean(ups, n)
                        for s, w in zip(kept, n / n.sum()):
                            record["sites"][s]["weight"] = float(w)
                    elif self.method == "median":
                        combined = aggregate_median(ups)
                    else:
                        combined = aggregate_trimmed_mean(ups, beta=self.trimmed_beta)
                    if self.method != "mean":
                        for s in kept:
                            record["sites"][s]["weight"] = None  # no per-site weight in a coordinate-wise rule
        for site, keys in personal.items():
            if keys and site in record["sites"]:
                record["sites"][site]["personal_keys"] = len(keys)  # kept at the site (names declared, never sent)
        for site, r in sorted(record["sites"].items()):
            self._log("info", _site_line(rnd, site, r))
        if combined is None:
            self._log("warning", f"round {rnd}: no update passed the gate; the global model stays as it is")
            combined = {}
        self._publish(record)
        return FLModel(params_type=ParamsType.DIFF, params=combined, current_round=rnd)

    def reset_stats(self):
        with self._lock:
            self._updates, self._reports, self._refused, self._round, self._personal = {}, {}, {}, None, {}

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
