"""Server workflow for secure aggregation: each round is the four exchanges of Bonawitz et al. (CCS 2017,
double masking; :mod:`fedsegnet.secagg.protocol`), and the server learns only the weighted sum of the
sites' updates.

One round, as FLARE tasks (one task per site and step; the payload under the Shareable key
:data:`~fedsegnet.flare.constants.SECAGG_KEY`, messages as ``to_dict()``)::

    secagg_advert  server -> site  {round, session}              site -> server  {KeyAdvert, n_train, label_kind}
    secagg_shares  server -> site  {Roster}                      site -> server  {ShareBundle}
    secagg_masked  server -> site  global model (DXO WEIGHTS) + {ShareInbox, weight, plan, layout}
                   site -> server  DXO(COLLECTION, {"masked": MaskedInput}, meta: the site's report)
    secagg_unmask  server -> site  {UnmaskRequest}               site -> server  {UnmaskReply}

**Weights.** The server cannot see a single update, so it weighs the sites from what they report
(:func:`~fedsegnet.aggregation.reported_weights`): with the job's ``aggregation=aam``, AAM's weights
(:meth:`~fedsegnet.aggregation.AdaptiveAggregation.weights`) from the training cases and label
kind each site reports with its advert and the label agreement and validation Dice it reported
with its previous round's masked input (a round late: the weights must be known before the site
trains), without the divergence and norm signals, which need the update; with ``mean``, the
training-case counts: ``w_u = n_u / sum(n_v for v in U2)``. Counts are bounded by the peers' as in
the plain modes. The weight goes with the masked-input task; the site multiplies its update by
``w_u`` before quantising it into the ring, so the ring sum is the weighted sum; the server divides
it by the survivors' weight (1 when nobody dropped) and adds it to the global model.

**Compression** (:mod:`fedsegnet.secagg.plan`). Each round's :class:`~fedsegnet.secagg.RoundPlan`
(sent with the masked-input task) names the blocks every site sends (about ``support_ratio`` of the
values: the job arg ``up_ratio``), one range per block and the value bits (``up_bits``); the site
sends those values, quantised, and one score per block (the log-RMS of what it has left to send)
in the ring of :func:`~fedsegnet.secagg.ring_bits_needed` bits, and keeps the rest in its error
feedback. The server plans the next round from the unmasked mean scores (:func:`~fedsegnet.secagg.next_plan`);
round 0, and the first round after a server restart, draw the blocks at random with 16-bit values.

**What stays as in** :class:`~fedsegnet.flare.workflow.ResumableScatterAndGather` (this class
subclasses it): loading the global model through the persistor and ``resume_from``, FLARE's round
events (``ROUND_STARTED``, ``BEFORE_CONTRIBUTION_ACCEPT`` per masked input with the site's report as
DXO meta, ``BEFORE/AFTER_AGGREGATION``, ``BEFORE/AFTER_SHAREABLE_TO_LEARNABLE``, persisting,
``ROUND_DONE``), so ``RoundRecorder`` and FLARE's model selector keep working. ``RoundRecorder`` gets
what is available: each site's report (cases, steps, loss, validation Dice) and, through the
aggregation record, ``aggregation_method="secure_aggregation"`` and per site its role (``survivor``
or ``dropped``), weight and advert check; the update norms and values it records in the plain modes
are not available. The server also appends one line per round to ``<job>/fedsegnet_secagg/rounds.jsonl``
(threshold, ring, survivors, dropped, responders, weights, what the adverts' check proved).

**Drop-outs.** A site that answers a step with an error, with a message the protocol refuses, or not
at all within ``step_timeout`` (``train_timeout`` for the masked-input step) is dropped from that step
on, logged with the reason; a step that leaves fewer than the threshold ends the round without an
aggregate (the global model stays as it was).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
from nvflare.apis.controller_spec import ClientTask, Task, TaskCompletionStatus
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from fedsegnet.aggregation.reports import reported_weights
from fedsegnet.config import check_job_args
from fedsegnet.errors import ConfigError
from fedsegnet.flare.constants import (
    AAM_RECORD_EVENT,
    AAM_RECORD_PROP,
    ERROR_HEADER,
    SECAGG_DIR,
    SECAGG_KEY,
    SECURE_AGGREGATION,
    SecAggTask,
    UpdateMeta,
)
from fedsegnet.flare.workflow import ROUND_SITES_EVENT, ROUND_SITES_PROP, ResumableScatterAndGather
from fedsegnet.secagg import (
    KeyAdvert,
    MaskedInput,
    SecAggError,
    ServerSecAgg,
    ShareBundle,
    UnmaskReply,
    check_threshold,
    next_plan,
    ring_bits_needed,
    unflatten,
)
from fedsegnet.secagg.adverts import weakest
from fedsegnet.secagg.masking import MAX_RING_BITS
from fedsegnet.secagg.plan import FIRST_VALUE_BITS

REPORT_META = {"agreement": UpdateMeta.LABEL_AGREEMENT, "val_dice_global": UpdateMeta.VAL_DICE_GLOBAL,
               "val_dice_local": UpdateMeta.VAL_DICE_LOCAL}  # fmt: skip
"""The masked input's report fields AAM reads next round (their meta keys)."""

METHOD = SECURE_AGGREGATION
"""``aggregation_method`` of the round records."""


def model_layout(weights: dict) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``((name, shape), ...)`` of the floating-point entries of ``weights`` in sorted name order: what the
    ring vector covers (integer buffers are not aggregated)."""
    return tuple(
        (k, tuple(np.asarray(weights[k]).shape)) for k in sorted(weights) if np.issubdtype(np.asarray(weights[k]).dtype, np.floating)
    )  # fmt: skip


def fitting_value_bits(value_bits: int, n_sites: int) -> int:
    """``value_bits``, or fewer where the sum of ``n_sites`` such values would not fit a 32-bit ring
    (``up_bits=32`` sends 29-bit values at 8 sites)."""
    bits = int(value_bits)
    while bits > 2 and ring_bits_needed(bits, n_sites) > MAX_RING_BITS:
        bits -= 1
    return bits


def server_root_ca(startup) -> bytes | None:
    """The root CA (PEM) of the server's startup kit in ``startup``, or None without a kit (the
    simulator): with one, every site's advert must be signed by a kit certificate under it."""
    startup = Path(startup)
    kit = all((startup / f).is_file() for f in ("server.key", "server.crt", "rootCA.pem"))
    return (startup / "rootCA.pem").read_bytes() if kit else None


class SecureScatterAndGather(ResumableScatterAndGather):
    """Scatter and gather whose server learns only the weighted sum of the sites' updates.

    Args:
        min_clients: sites needed for a round (the job's ``meta.json`` decides how many start it).
            Defaults to 2.
        num_rounds: rounds in all. Defaults to 5.
        start_round: first round. Defaults to 0.
        aggregator_id, persistor_id, shareable_generator_id: component ids as FLARE's (the aggregator
            must exist for FLARE's start-up checks; it receives no update).
        train_timeout: seconds the masked-input step (which trains) waits (0 = no limit). Defaults to 0.
        secure_aggregation: False runs the plain rounds of :class:`~fedsegnet.flare.workflow.ResumableScatterAndGather`
            (the update decoded and aggregated by the aggregator), so one job folder serves both modes
            through its ``secure_aggregation`` job arg. Defaults to False.
        step_timeout: seconds each other step waits for the sites (0 = no limit). Defaults to 120.
        secagg_threshold: ``t``, the fewest sites each step needs; 0 = ``max(2, floor(n/2) + 1)`` for
            the ``n`` sites of the round (checked by :func:`~fedsegnet.secagg.check_threshold`).
            Defaults to 0.
        peer_cases_ratio: a site's reported case count counts at most this many times the others'
            lower median (the job arg ``aam_peer_cases_ratio``; 0 = as reported). Defaults to 2.0.
        support_ratio: share of each tensor's values in a round's support, (0, 1] (the job arg
            ``up_ratio``; 1 = every value). Defaults to 0.1.
        value_bits: bits of one site's value once the previous round's scores exist (the job arg
            ``up_bits``; lowered to what a 32-bit ring holds for the round's sites). Defaults to 4.
        block: values per block of the support and per range (the job arg ``compression_block``;
            0 = one per tensor). Defaults to 256.
        scope: ``"tensor"`` (``support_ratio`` of each tensor) or ``"global"`` (of the model; the
            job arg ``compression_scope``). Defaults to ``"tensor"``.
        first_clip: the range of every value in a round without scores (round 0). Defaults to 1.0.
        keep_masked_inputs: write what the server received and computed (masked inputs, ring sum,
            aggregate) under ``<job>/fedsegnet_secagg/`` for tests; never a site's own input, which the
            server does not have. Defaults to False.
        wait_time_after_min_received, train_task_name, ignore_result_error, drop_stragglers: the plain
            rounds' (:class:`~fedsegnet.flare.workflow.ResumableScatterAndGather`; same defaults). Under
            secure aggregation a site that fails a step is dropped from it (``ignore_result_error`` is
            not used).
        task_check_period, persist_every_n_rounds, snapshot_every_n_rounds: FLARE's (same defaults).

    Raises:
        ConfigError: a bad argument, naming it and the valid range.
    """

    def __init__(
        self,
        min_clients: int = 2,
        num_rounds: int = 5,
        start_round: int = 0,
        aggregator_id: str = AppConstants.DEFAULT_AGGREGATOR_ID,
        persistor_id: str = "",
        shareable_generator_id: str = AppConstants.DEFAULT_SHAREABLE_GENERATOR_ID,
        train_timeout: int = 0,
        secure_aggregation: bool = False,
        step_timeout: int = 120,
        secagg_threshold: int = 0,
        peer_cases_ratio: float = 2.0,
        support_ratio: float = 0.1,
        value_bits: int = 4,
        block: int = 256,
        scope: str = "tensor",
        first_clip: float = 1.0,
        keep_masked_inputs: bool = False,
        wait_time_after_min_received: int = 10,
        train_task_name: str = AppConstants.TASK_TRAIN,
        ignore_result_error: bool | None = True,
        drop_stragglers: bool = False,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
    ):
        if not isinstance(secure_aggregation, bool):
            raise ConfigError("secure_aggregation", secure_aggregation, "must be true or false")
        super().__init__(
            min_clients=min_clients, num_rounds=num_rounds, start_round=start_round,
            wait_time_after_min_received=wait_time_after_min_received, aggregator_id=aggregator_id,
            persistor_id=persistor_id, shareable_generator_id=shareable_generator_id, train_task_name=train_task_name,
            train_timeout=train_timeout, ignore_result_error=ignore_result_error,
            drop_stragglers=drop_stragglers, task_check_period=task_check_period,
            persist_every_n_rounds=persist_every_n_rounds, snapshot_every_n_rounds=snapshot_every_n_rounds,
        )  # fmt: skip
        self.secure_aggregation = secure_aggregation
        if isinstance(step_timeout, bool) or not isinstance(step_timeout, int) or step_timeout < 0:
            raise ConfigError("step_timeout", step_timeout, "must be an integer >= 0 (seconds, 0 = no limit)")
        if isinstance(secagg_threshold, bool) or not isinstance(secagg_threshold, int) or secagg_threshold < 0 or secagg_threshold == 1:
            raise ConfigError("secagg_threshold", secagg_threshold, "must be 0 (a majority of the sites) or an integer >= 2")
        if not isinstance(keep_masked_inputs, bool):
            raise ConfigError("keep_masked_inputs", keep_masked_inputs, "must be true or false")
        if isinstance(first_clip, bool) or not isinstance(first_clip, (int, float)) or not math.isfinite(first_clip) or first_clip <= 0:
            raise ConfigError("first_clip", first_clip, "must be a finite number > 0")
        names = {"peer_cases_ratio": "aam_peer_cases_ratio", "support_ratio": "up_ratio", "value_bits": "up_bits",
                 "block": "compression_block", "scope": "compression_scope"}  # fmt: skip
        check_job_args({"peer_cases_ratio": peer_cases_ratio, "support_ratio": support_ratio, "value_bits": value_bits,
                        "block": block, "scope": scope}, names)  # fmt: skip
        self.support_ratio, self.value_bits, self.block, self.scope = support_ratio, value_bits, block, scope
        self.first_clip = float(first_clip)
        self.peer_cases_ratio = peer_cases_ratio
        self.step_timeout = step_timeout
        self.secagg_threshold = secagg_threshold
        self.keep_masked_inputs = keep_masked_inputs
        self._root_ca = None  # the server kit's root CA, read when the secure rounds start
        self._scores = None  # (layout, the last round's mean block scores): public, the next plan's input
        self._reports = {}  # site -> what it reported with its last masked input (AAM's signals next round)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ rounds
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        if not self.secure_aggregation:  # the job's plain rounds: ResumableScatterAndGather's
            return super().control_flow(abort_signal, fl_ctx)
        try:
            self._control_flow(abort_signal, fl_ctx)
        except Exception as e:  # a bug here must end the job with a reason, not hang it
            self.log_exception(fl_ctx, f"secure aggregation control flow: {type(e).__name__}: {e}")
            self.system_panic(f"secure aggregation control flow: {type(e).__name__}: {e}", fl_ctx)

    def _control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.log_info(
            fl_ctx, "secure aggregation: the server learns only each round's weighted sum of the updates; the weights come "
            "from what the sites report (aggregation=aam: AAM's weights from the reported cases, label kinds and Dice, "
            "without the divergence and norm signals, which need each update; mean: the case counts); the uplink is "
            "compressed on one support per round for all sites (up_ratio, up_bits; docs/secure_aggregation.md); sites "
            "refuse plain train and submit_model tasks",
        )  # fmt: skip
        self._root_ca = server_root_ca(self._engine.get_workspace().get_startup_kit_dir())  # once per job
        self._phase = AppConstants.PHASE_TRAIN
        fl_ctx.set_prop(AppConstants.PHASE, self._phase, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=False)
        self.fire_event(AppEventType.TRAINING_STARTED, fl_ctx)
        if self._current_round is None:
            self._current_round = self._start_round
        while self._current_round < self._start_round + self._num_rounds:
            if self._check_abort_signal(fl_ctx, abort_signal):
                return
            rnd = self._current_round
            self.log_info(fl_ctx, f"Round {rnd} started (secure aggregation).")
            fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, rnd, private=True, sticky=True)
            self.fire_event(AppEventType.ROUND_STARTED, fl_ctx)
            update, record = self._secure_round(rnd, fl_ctx, abort_signal)
            if self._check_abort_signal(fl_ctx, abort_signal):
                return
            self.fire_event(AppEventType.BEFORE_AGGREGATION, fl_ctx)  # the model selector scores the round's reports
            if update is not None:
                aggregate = DXO(DataKind.WEIGHT_DIFF, data=update).to_shareable()
                self.fire_event_with_data(AppEventType.AFTER_AGGREGATION, fl_ctx, AppConstants.AGGREGATION_RESULT, aggregate)
                self.fire_event(AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE, fl_ctx)
                self._global_weights = self.shareable_gen.shareable_to_learnable(aggregate, fl_ctx)
                fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
                fl_ctx.sync_sticky()
                self.fire_event(AppEventType.AFTER_SHAREABLE_TO_LEARNABLE, fl_ctx)
            last = rnd == self._start_round + self._num_rounds - 1
            if self.persistor and (last or (self._persist_every_n_rounds and (rnd + 1) % self._persist_every_n_rounds == 0)):
                self.fire_event(AppEventType.BEFORE_LEARNABLE_PERSIST, fl_ctx)
                self.persistor.save(self._global_weights, fl_ctx)
                self.fire_event(AppEventType.AFTER_LEARNABLE_PERSIST, fl_ctx)
            self._publish(record, fl_ctx)
            self.fire_event(AppEventType.ROUND_DONE, fl_ctx)
            self.log_info(fl_ctx, f"Round {rnd} finished.")
            self._current_round += 1
            if self._snapshot_every_n_rounds and self._current_round % self._snapshot_every_n_rounds == 0:
                self._engine.persist_components(fl_ctx, completed=False)
        self._phase = AppConstants.PHASE_FINISHED
        self.log_info(fl_ctx, "Finished secure aggregation training.")

    def _secure_round(self, rnd: int, fl_ctx: FLContext, abort_signal: Signal):
        """The four exchanges of round ``rnd``: ``(update or None, record)``."""
        sites = sorted(c.name for c in self._engine.get_clients())
        weights = self._global_weights[ModelLearnableKey.WEIGHTS]
        layout = model_layout(weights)
        length = int(sum(math.prod(shape) for _, shape in layout))
        session = fl_ctx.get_job_id()
        record = {"round": rnd, "mode": METHOD, "asked": sites, "survivors": [], "dropped": {}, "aggregated": False}
        scores = self._scores[1] if self._scores is not None and self._scores[0] == layout else None
        try:
            threshold = check_threshold(self.secagg_threshold or max(2, len(sites) // 2 + 1), len(sites))
            plan = next_plan(
                rnd, layout, len(sites), session.encode(), ratio=self.support_ratio,
                value_bits=fitting_value_bits(self.value_bits, len(sites)), block=self.block, scope=self.scope,
                mean_log_rms=scores, first_value_bits=fitting_value_bits(FIRST_VALUE_BITS, len(sites)), first_clip=self.first_clip,
            )  # fmt: skip
            server = ServerSecAgg(rnd, sites, threshold, plan.ring_bits, plan.length, session=session, root_ca=self._root_ca,
                                  require_signed=self._root_ca is not None)  # fmt: skip
        except SecAggError as e:
            self.log_error(fl_ctx, f"round {rnd}: secure aggregation cannot run: {e}; the global model stays as it was")
            record["error"] = str(e)
            return None, record
        record.update(threshold=threshold, ring_bits=plan.ring_bits, length=plan.length, numel=length, plan=plan.summary(),
                      planned_from="scores" if scores is not None else "random (no scores yet)")  # fmt: skip
        dropped = record["dropped"]
        seconds = record["seconds"] = {}

        def drop(site, step, why):
            dropped.setdefault(site, {"step": step, "reason": why})
            self.log_warning(fl_ctx, f"round {rnd}: site {site} dropped at step {step}: {why}")

        def answered(site, step, result) -> bool:
            """Whether ``result`` is a reply without error (else the site is dropped, with the reason)."""
            if result is None:
                drop(site, step, "no answer within the step's timeout")
                return False
            rc = result.get_return_code(ReturnCode.OK)
            if rc != ReturnCode.OK:
                drop(site, step, f"error reply ({rc}): {result.get_header(ERROR_HEADER) or 'no message'}")
                return False
            return True

        def payload(site, step, result):
            """The reply's secagg payload, or None (the site is dropped, with the reason)."""
            if not answered(site, step, result):
                return None
            data = result.get(SECAGG_KEY)
            if not isinstance(data, dict):
                drop(site, step, "the reply carries no secure-aggregation payload")
                return None
            return data

        def closing(step, call):
            try:
                return call()
            except SecAggError as e:
                self.log_error(fl_ctx, f"round {rnd}: step {step} cannot close: {e}; no aggregate this round")
                record["error"] = f"step {step}: {e}"
                return None

        # step 0: adverts (and the cases each site trains on, for the weights)
        t0 = time.perf_counter()
        replies = self._exchange(SecAggTask.ADVERT, {s: {"round": rnd, "session": session} for s in sites}, rnd, fl_ctx, abort_signal, self.step_timeout)
        n_train, kinds = {}, {}
        for site in sites:
            data = payload(site, "advert", replies.get(site))
            if data is None:
                continue
            try:
                server.receive_advert(KeyAdvert.from_dict(data.get("message")))
                n = data.get("n_train")
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise SecAggError(f"n_train={n!r}: must be a positive integer", rnd, site)
            except SecAggError as e:
                drop(site, "advert", str(e))
                continue
            n_train[site] = n
            kinds[site] = data.get("label_kind") if isinstance(data.get("label_kind"), str) else None
        seconds["advert"] = time.perf_counter() - t0
        if abort_signal.triggered or (roster := closing("advert", server.roster)) is None:
            return None, record
        record["key_checks"] = dict(server.key_checks)
        label = weakest(server.key_checks.values())
        record["key_check"] = label
        self.log_info(
            fl_ctx, f"round {rnd}: roster of {len(roster.adverts)} site(s), threshold {threshold}, adverts "
            f"{label} (simulator or no kits: no root CA; protects against an honest-but-curious server only)"
            if label != "kit" else f"round {rnd}: roster of {len(roster.adverts)} site(s), threshold {threshold}, adverts kit-signed",
        )  # fmt: skip

        # step 1: sealed shares in, inboxes out
        t0 = time.perf_counter()
        replies = self._exchange(SecAggTask.SHARES, {s: {"message": roster.to_dict()} for s in roster.adverts}, rnd, fl_ctx, abort_signal, self.step_timeout)
        for site in sorted(roster.adverts):
            data = payload(site, "shares", replies.get(site))
            if data is None:
                continue
            try:
                server.receive_shares(ShareBundle.from_dict(data.get("message")))
            except SecAggError as e:
                drop(site, "shares", str(e))
        seconds["shares"] = time.perf_counter() - t0
        if abort_signal.triggered or (inboxes := closing("shares", server.inboxes)) is None:
            return None, record
        aam = self._aam()
        site_weights, signals = reported_weights(
            aam, {s: n_train[s] for s in inboxes}, kinds, self._reports, self.peer_cases_ratio,
            getattr(self.aggregator, "max_cases", 100_000),
        )  # fmt: skip
        record["weights"] = site_weights
        record["weighting"] = "aam (reported signals)" if aam is not None else "sample counts"
        if signals:
            record["aam"] = {s: {k: v for k, v in sig.items() if k in ("quality", "performance", "score", "prior", "weight")}
                             for s, sig in signals.items()}  # fmt: skip
        record["n_train"] = {s: n_train[s] for s in inboxes}

        # step 2: the global model, the inbox and the weight out; the site trains and sends its masked input
        t0 = time.perf_counter()
        tasks = {}
        for site, inbox in inboxes.items():
            data = self.shareable_gen.learnable_to_shareable(self._global_weights, fl_ctx)  # the global model
            data.set_header(AppConstants.CURRENT_ROUND, rnd)
            data.set_header(AppConstants.NUM_ROUNDS, self._num_rounds)
            data.add_cookie(AppConstants.CONTRIBUTION_ROUND, rnd)
            data[SECAGG_KEY] = {
                "inbox": inbox.to_dict(), "weight": site_weights[site], "plan": plan.to_dict(),
                "layout": [[name, list(shape)] for name, shape in layout],
            }  # fmt: skip
            tasks[site] = data
        masked_ok = set()

        def on_masked(client_task: ClientTask, fl_ctx: FLContext):
            site, result = client_task.client.name, client_task.result
            if not answered(site, "masked", result):
                return
            try:  # the reply is a DXO whose data holds the message; its meta is the site's report
                with self._lock:
                    server.receive_masked_input(MaskedInput.from_dict(from_shareable(result).data.get("masked")))
            except (SecAggError, ValueError, TypeError, AttributeError) as e:
                drop(site, "masked", f"a masked input the protocol refuses: {e}")
                return
            masked_ok.add(site)
            meta = from_shareable(result).meta or {}
            with self._lock:  # AAM's signals of the next round
                self._reports[site] = {k: meta.get(m) for k, m in REPORT_META.items()}
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, rnd, private=True, sticky=True)
            fl_ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
            self.fire_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)  # RoundRecorder and the model selector read the report
            fl_ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, True, private=True, sticky=False)
            self.fire_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)

        replies = self._exchange(SecAggTask.MASKED, tasks, rnd, fl_ctx, abort_signal, self._train_timeout, on_masked)
        for site in inboxes:
            if site not in masked_ok and site not in dropped:
                drop(site, "masked", "no masked input within train_timeout")
        seconds["masked"] = time.perf_counter() - t0
        if abort_signal.triggered or (request := closing("masked", server.unmask_request)) is None:
            return None, record
        if self.keep_masked_inputs:
            for site, y in server.masked.items():
                self._keep(fl_ctx, f"round{rnd}_{site}_masked.npy", y)

        # step 3: unmask
        t0 = time.perf_counter()
        replies = self._exchange(SecAggTask.UNMASK, {s: {"message": request.to_dict()} for s in request.survivors}, rnd, fl_ctx, abort_signal, self.step_timeout)
        for site in request.survivors:
            data = payload(site, "unmask", replies.get(site))
            if data is None:
                continue
            try:
                server.receive_unmask_reply(UnmaskReply.from_dict(data.get("message")))
            except SecAggError as e:
                drop(site, "unmask", str(e))
        if abort_signal.triggered or (result := closing("unmask", server.result)) is None:
            return None, record
        seconds["unmask"] = time.perf_counter() - t0
        total_weight = sum(site_weights[s] for s in result.survivors)
        values, mean_scores = plan.decode(result.ring_sum, len(result.survivors))
        flat = values / total_weight
        self._scores = (layout, mean_scores)  # a sum the server was meant to learn: the next plan's input
        update = {k: v.astype(np.asarray(weights[k]).dtype) for k, v in unflatten(flat, layout).items()}
        record.update(
            survivors=list(result.survivors), responders=list(result.responders), aggregated=True,
            survivor_weight=total_weight, aggregate_norm=float(np.linalg.norm(flat)),
        )  # fmt: skip
        if self.keep_masked_inputs:
            self._keep(fl_ctx, f"round{rnd}_ring_sum.npy", result.ring_sum)
            self._keep(fl_ctx, f"round{rnd}_aggregate.npy", flat)
        self.log_info(
            fl_ctx, f"round {rnd}: sum of {len(result.survivors)} masked input(s) unmasked ({', '.join(result.survivors)}; "
            f"dropped {result.dropped or 'none'}), {plan.support.size:,} of {length:,} values in {plan.blocks.size} blocks "
            f"({record['planned_from']}) at {plan.value_bits} bits in Z_2^{plan.ring_bits}, weights {site_weights}, "
            f"aggregate norm {record['aggregate_norm']:.4g}",
        )  # fmt: skip
        return update, record

    def _aam(self):
        """The job's AAM state when its aggregator weighs by AAM (``aggregation=aam``), else None."""
        from fedsegnet.flare.aggregator import AAMAggregator

        agg = self.aggregator
        return agg.aam if isinstance(agg, AAMAggregator) and agg.method == "aam" else None

    def _exchange(self, name: str, data: dict, rnd: int, fl_ctx: FLContext, abort_signal: Signal, timeout: int, on_result=None) -> dict:
        """Send task ``name`` to each site of ``data`` with its own payload; wait until every task closed.

        Returns:
            ``{site: result Shareable}`` of the sites that answered (a timed-out or dead site is absent).
        """
        results = {}

        def received(client_task: ClientTask, fl_ctx: FLContext):
            with self._lock:
                results[client_task.client.name] = client_task.result
            if on_result is not None:
                on_result(client_task, fl_ctx)

        tasks = []
        for site, payload in data.items():
            shareable = payload if isinstance(payload, Shareable) else Shareable()
            if not isinstance(payload, Shareable):
                shareable[SECAGG_KEY] = payload
                shareable.set_header(AppConstants.CURRENT_ROUND, rnd)
            task = Task(name=name, data=shareable, timeout=timeout, result_received_cb=received)
            self.broadcast(task=task, fl_ctx=fl_ctx, targets=[site], min_responses=1)
            tasks.append(task)
        while any(t.completion_status is None for t in tasks):
            if abort_signal is not None and abort_signal.triggered:
                for t in tasks:
                    self.cancel_task(t, TaskCompletionStatus.ABORTED, fl_ctx)
                break
            time.sleep(self._task_check_period)
        return dict(results)

    def _keep(self, fl_ctx: FLContext, name: str, array: np.ndarray) -> None:
        folder = os.path.join(self._engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), SECAGG_DIR)
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, name), array)

    def _publish(self, record: dict, fl_ctx: FLContext) -> None:
        """The round's facts for ``RoundRecorder`` (who was asked, who dropped and why, each site's role)
        and one line of ``<job>/fedsegnet_secagg/rounds.jsonl``."""
        unanswered = {s: {"reason": "failed" if "error reply" in d["reason"] else "late",
                          "detail": f"secure aggregation step {d['step']}: {d['reason']}"}
                      for s, d in record["dropped"].items()}  # fmt: skip
        fl_ctx.set_prop(ROUND_SITES_PROP, {"asked": record["asked"], "unanswered": unanswered}, private=True, sticky=False)
        self.fire_event(ROUND_SITES_EVENT, fl_ctx)
        checks, weights = record.get("key_checks", {}), record.get("weights", {})
        sites = {}
        for site in record["asked"]:
            role = "survivor" if site in record["survivors"] else ("dropped" if site in record["dropped"] else "not aggregated")
            sites[site] = {"accepted": site in record["survivors"], "secagg": role, "weight": weights.get(site),
                           "key_check": checks.get(site), **{k: v for k, v in record.get("aam", {}).get(site, {}).items()
                                                             if k != "weight"}}  # fmt: skip
        summary = {k: record.get(k) for k in ("survivors", "dropped", "aggregated", "threshold", "weighting", "key_check",
                                              "plan", "planned_from", "error") if record.get(k) is not None}  # fmt: skip
        fl_ctx.set_prop(AAM_RECORD_PROP, {"round": record["round"], "method": METHOD, "sites": sites, "secure_aggregation": summary},
                        private=True, sticky=False)  # fmt: skip
        self.fire_event(AAM_RECORD_EVENT, fl_ctx)
        folder = os.path.join(self._engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), SECAGG_DIR)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "rounds.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": time.time()}) + "\n")
