"""Site executor for secure aggregation: FLARE's ``LearnerExecutor`` that also answers the four tasks
of a secure-aggregation round (:class:`~fedsegnet.flare.secagg_workflow.SecureScatterAndGather`) with
:class:`~fedsegnet.secagg.SiteSecAgg`. With ``secure_aggregation=true`` it refuses ``train`` and
``submit_model`` (their answers would carry the update in the clear); with ``false`` it is FLARE's
``LearnerExecutor`` and refuses the secure-aggregation tasks.

The masked-input task trains exactly as ``train`` does (the learner's ``validate`` of the received
global model before training, then its ``train``), multiplies the update by the weight the server
sent (the site's share of the training cases), encodes it under the round's plan
(:class:`~fedsegnet.secagg.RoundPlan`: the shared blocks, their ranges, the value bits, then one
score per block) with the site's :class:`~fedsegnet.secagg.SecAggErrorFeedback` (what the support
does not carry stays in the residual), masks it and returns only the masked input, with
the learner's report (cases, steps, loss, validation Dice) as DXO meta. The update itself never
leaves the site.

Adverts (:func:`advert_keys`): with a startup kit (POC, production) the site signs its adverts with
the kit's ``client.key`` and accepts only adverts signed under the kit's ``rootCA.pem`` (label
``"kit"``), so a server cannot swap in keys of its own. Without one (the simulator) it signs with a
key generated for the run (label ``"signed, no root CA"``) or not at all (``adverts="unsigned"``),
and the log says that the round then protects against an honest-but-curious server only. The
certificates seen in one round are pinned for the next.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReturnCode, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants, ValidateType
from nvflare.app_common.executors.learner_executor import LearnerExecutor

from fedsegnet.flare.constants import ERROR_HEADER, SECAGG_DIR, SECAGG_KEY, SecAggTask
from fedsegnet.secagg import (
    KEYS_KIT,
    Roster,
    RoundPlan,
    SecAggError,
    SecAggErrorFeedback,
    ShareInbox,
    SiteSecAgg,
    UnmaskRequest,
    flatten,
)

ADVERT_MODES = ("auto", "kit", "generated", "unsigned")


def advert_keys(startup, site: str, adverts: str = "auto"):
    """What a site signs its adverts with and checks the others' against: ``(signer, root_ca PEM,
    require_signed)``.

    ``"auto"``: the startup kit's ``client.key``/``client.crt`` and ``rootCA.pem`` when ``startup``
    holds them (POC, production: every advert must then be signed under the kit's root CA), else a
    key generated for the run (the simulator); ``"kit"``: the kit's, or refuse; ``"generated"``: a
    generated key; ``"unsigned"``: none.

    Raises:
        SecAggError: ``"kit"`` and ``startup`` is not a site's startup kit (naming the folder).
    """
    from fedsegnet.ledger.signing import Signer, generate_signer

    startup = Path(startup)
    kit = all((startup / f).is_file() for f in ("client.key", "client.crt", "rootCA.pem"))
    if adverts in ("auto", "kit") and kit:
        return Signer.from_kit(startup, site), (startup / "rootCA.pem").read_bytes(), True
    if adverts == "kit":
        raise SecAggError(f"adverts='kit' but {startup} holds no client.key, client.crt and rootCA.pem (not a site's startup kit)", None, site)
    return (None if adverts == "unsigned" else generate_signer(site)), None, False


class SecAggLearnerExecutor(LearnerExecutor):
    """``LearnerExecutor`` plus the site's side of secure aggregation.

    Args:
        learner_id: the learner component (``SegLearner``). Defaults to ``"learner"``.
        train_task, submit_model_task, validate_task: FLARE's task names (same defaults).
        adverts: ``"auto"`` (the startup kit's key and root CA when the site has a kit, else a key
            generated for the run), ``"kit"``, ``"generated"`` or ``"unsigned"`` (:func:`advert_keys`).
            Defaults to ``"auto"``.
        min_threshold: the smallest threshold this site accepts. Defaults to 2.
        keep_inputs: write this site's own weighted update and ring input of each round to
            ``<site job workspace>/fedsegnet_secagg/`` (tests compare them with what the server holds;
            they never leave the site). Defaults to False.
        secure_aggregation: True: the site sends its update only masked. It refuses a plain ``train``
            task (whose answer is the update itself) and ``submit_model`` (its local model is the global
            model plus its update), whatever the server asks; ``validate`` of a model the server sends is
            answered. False: ``LearnerExecutor`` as FLARE ships it, and the secure-aggregation tasks are
            refused. The job arg ``secure_aggregation`` sets it. Defaults to False.

    Raises:
        ValueError: a bad ``adverts``, ``min_threshold``, ``keep_inputs`` or ``secure_aggregation``, naming it.
    """

    def __init__(
        self,
        learner_id: str = "learner",
        train_task: str = AppConstants.TASK_TRAIN,
        submit_model_task: str = AppConstants.TASK_SUBMIT_MODEL,
        validate_task: str = AppConstants.TASK_VALIDATION,
        adverts: str = "auto",
        min_threshold: int = 2,
        keep_inputs: bool = False,
        secure_aggregation: bool = False,
    ):
        super().__init__(learner_id=learner_id, train_task=train_task, submit_model_task=submit_model_task, validate_task=validate_task)
        if adverts not in ADVERT_MODES:
            raise ValueError(f"adverts={adverts!r}: must be one of {', '.join(ADVERT_MODES)}")
        if isinstance(min_threshold, bool) or not isinstance(min_threshold, int) or min_threshold < 2:
            raise ValueError(f"min_threshold={min_threshold!r}: must be an integer >= 2")
        for name, value in (("keep_inputs", keep_inputs), ("secure_aggregation", secure_aggregation)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: must be true or false")
        self.secure_aggregation = secure_aggregation
        self.adverts = adverts
        self.min_threshold = min_threshold
        self.keep_inputs = keep_inputs
        self._site = None
        self._round: SiteSecAgg | None = None
        self._keys = None  # (signer, root CA, require_signed) of advert_keys, once per job
        self._certs = {}  # certificates of the other sites seen in earlier rounds (pinned)
        self._feedback = None
        self._rng = np.random.default_rng()  # stochastic rounding: secret, from the OS

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        self._site = fl_ctx.get_identity_name()
        refused = self._refusal(task_name)
        if refused:
            self.log_error(fl_ctx, refused)
            return self._error(refused)
        if task_name not in SecAggTask.ALL:
            return super().execute(task_name, shareable, fl_ctx, abort_signal)
        if not self.is_initialized:
            self.is_initialized = True
            self.initialize(fl_ctx)
        if self._feedback is None:
            self._feedback = SecAggErrorFeedback(self._site)
        try:
            if task_name == SecAggTask.ADVERT:
                return self._advertise(shareable, fl_ctx)
            if task_name == SecAggTask.SHARES:
                return self._share_keys(shareable, fl_ctx)
            if task_name == SecAggTask.MASKED:
                return self._masked_input(shareable, fl_ctx, abort_signal)
            return self._unmask(shareable, fl_ctx)
        except (SecAggError, ValueError, TypeError, KeyError) as e:
            message = f"site {self._site}, {task_name}: {e}"
            self.log_error(fl_ctx, message)
            if task_name in (SecAggTask.ADVERT, SecAggTask.SHARES, SecAggTask.MASKED):
                self._round = None  # this site is out of the round
            return self._error(message)

    def _refusal(self, task_name: str) -> str | None:
        """Why this site refuses ``task_name`` in this job's mode, or None."""
        site = self._site
        if not self.secure_aggregation and task_name in SecAggTask.ALL:
            return f"site {site}: task {task_name!r} refused: this job runs with secure_aggregation=false"
        if self.secure_aggregation and task_name in (self.train_task, self.submit_model_task):
            what = "its update" if task_name == self.train_task else "its local model (the global model plus its update)"
            return (f"site {site}: task {task_name!r} refused: this job runs with secure_aggregation=true, so the site "
                    f"sends {what} only masked, never in the clear")  # fmt: skip
        return None

    @staticmethod
    def _error(message: str) -> Shareable:
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_HEADER, message)
        return reply

    @staticmethod
    def _reply(payload: dict) -> Shareable:
        reply = make_reply(ReturnCode.OK)
        reply[SECAGG_KEY] = payload
        return reply

    @staticmethod
    def _payload(shareable: Shareable) -> dict:
        data = shareable.get(SECAGG_KEY)
        if not isinstance(data, dict):
            raise SecAggError(f"the task carries no secure-aggregation payload ({SECAGG_KEY!r})")
        return data

    def _expect_round(self, message) -> SiteSecAgg:
        if self._round is None or self._round.round != message.round:
            raise SecAggError(f"a {message.KIND} message of round {message.round!r}, but this site holds no state for it (it advertised no keys for that round)")
        return self._round

    def _advertise(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        trainer_error = getattr(self.learner, "init_error", None)
        if trainer_error:
            return self._error(trainer_error)
        data = self._payload(shareable)
        rnd, session = data.get("round"), data.get("session")
        if session != fl_ctx.get_job_id():
            raise SecAggError(f"session {session!r} is not this job's ({fl_ctx.get_job_id()!r})", rnd, self._site)
        if self._keys is None:  # once per job: the kit's key, or one generated for the run
            self._keys = advert_keys(fl_ctx.get_engine().get_workspace().get_startup_kit_dir(), self._site, self.adverts)
            how = ("signed with the startup kit's key; the other sites' checked against its root CA" if self._keys[1]
                   else "signed with a key generated for the run (no kit)" if self._keys[0] else "unsigned")  # fmt: skip
            self.log_info(fl_ctx, f"secure aggregation adverts: {how}")
        signer, root_ca, require_signed = self._keys
        self._round = SiteSecAgg(
            self._site, rnd, min_threshold=self.min_threshold, session=session, signer=signer,
            root_ca=root_ca, require_signed=require_signed, certs=self._certs,
        )  # fmt: skip
        advert = self._round.advertise()
        n_train = int(self.learner.trainer.n_train)
        return self._reply({"message": advert.to_dict(), "n_train": n_train, "label_kind": self.learner.label_kind})

    def _share_keys(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        roster = Roster.from_dict(self._payload(shareable).get("message"))
        state = self._expect_round(roster)
        bundle = state.share_keys(roster)
        self._certs.update(state.peer_certs)
        if state.key_check != KEYS_KIT:
            self.log_warning(
                fl_ctx, f"round {roster.round}: adverts {state.key_checks} ({state.key_check}: keys generated for the "
                "run or unsigned, no kit and no root CA): the masking protects against an honest-but-curious server only",
            )  # fmt: skip
        return self._reply({"message": bundle.to_dict()})

    def _masked_input(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        data = self._payload(shareable)
        inbox = ShareInbox.from_dict(data.get("inbox"))
        state = self._expect_round(inbox)
        weight = data.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise SecAggError(f"weight={weight!r}: must be in (0, 1]", inbox.round, self._site)
        layout = tuple((str(name), tuple(int(d) for d in shape)) for name, shape in data.get("layout", ()))
        plan = RoundPlan.from_dict(data.get("plan"), layout)
        if plan.round != inbox.round:
            raise SecAggError(f"a plan of round {plan.round!r} in round {inbox.round}'s task", inbox.round, self._site)
        if (plan.ring_bits, plan.length) != (state.roster.ring_bits, state.roster.length):
            raise SecAggError(
                f"the plan's ring ({plan.ring_bits} bits, {plan.length} values) is not the roster's "
                f"({state.roster.ring_bits} bits, {state.roster.length} values)", inbox.round, self._site,
            )  # fmt: skip
        # train as LearnerExecutor.train does: score the received global model first, then train
        shareable.set_header(AppConstants.VALIDATE_TYPE, ValidateType.BEFORE_TRAIN_VALIDATE)
        validated = self.learner.validate(shareable, fl_ctx, abort_signal)
        result = self.learner.train(shareable, fl_ctx, abort_signal)
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            self._round = None
            return result if isinstance(result, Shareable) else make_reply(ReturnCode.EMPTY_RESULT)
        dxo = from_shareable(result)
        update = dxo.data or {}
        missing = [name for name, shape in layout if name not in update or tuple(np.shape(update[name])) != shape]
        if missing:
            raise SecAggError(f"the update lacks or reshapes {len(missing)} parameter(s) of the layout, e.g. {missing[:3]}", inbox.round, self._site)
        weighted = {name: float(weight) * np.asarray(update[name], dtype=np.float64) for name, _ in layout}
        before = self._feedback.residual.copy() if self.keep_inputs and self._feedback.residual is not None else None
        ring = self._feedback.encode(weighted, plan, self._rng)
        masked = state.masked_input(inbox, ring)
        if self.keep_inputs:
            self._keep_inputs(fl_ctx, inbox.round, weighted, ring, weight, plan, before)
        meta = dict(dxo.meta)
        if validated is not None and isinstance(validated, Shareable) and validated.get_return_code(ReturnCode.OK) == ReturnCode.OK:
            try:
                meta[MetaKey.INITIAL_METRICS] = from_shareable(validated).data.get(MetaKey.INITIAL_METRICS, 0)
            except ValueError:
                pass
        self.log_info(
            fl_ctx, f"round {inbox.round}: update x weight {weight:.4f} on the round's {plan.support.size:,} of "
            f"{plan.numel:,} values ({plan.blocks.size} blocks) at {plan.value_bits} bits, with {plan.n_blocks} block "
            f"scores, in Z_2^{plan.ring_bits}, masked with {len(inbox.sharing) - 1} peer(s); the rest stays in the "
            "site's error feedback; only the masked input leaves the site",
        )  # fmt: skip
        return DXO(DataKind.COLLECTION, data={"masked": masked.to_dict()}, meta=meta).to_shareable()

    def _keep_inputs(self, fl_ctx, rnd, weighted, ring, weight, plan, before):
        """What only this site holds: its weighted update, its ring input, the values that input stands
        for (``carried``, zero off the support) and its residual before and after the round."""
        folder = os.path.join(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()), SECAGG_DIR)
        os.makedirs(folder, exist_ok=True)
        flat, _ = flatten(weighted)
        before = np.zeros_like(flat) if before is None else before
        carried = flat + before - self._feedback.residual
        np.savez(os.path.join(folder, f"{self._site}_round{rnd}.npz"), weighted=flat, ring=ring, weight=weight,
                 carried=carried, residual_before=before, residual=self._feedback.residual, support=plan.support,
                 ring_bits=plan.ring_bits, value_bits=plan.value_bits)  # fmt: skip

    def _unmask(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        request = UnmaskRequest.from_dict(self._payload(shareable).get("message"))
        state = self._expect_round(request)
        reply = state.unmask(request)
        self._round = None  # the round is over for this site
        return self._reply({"message": reply.to_dict()})
