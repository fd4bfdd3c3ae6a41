"""FLARE filters for compressed updates in both directions, and real byte accounting.

Uplink (site -> server), on the ``train`` task:

- :class:`UpdateEncoder` (site task-result filter): encodes the site's ``WEIGHT_DIFF`` with
  :class:`~fedsegnet.compression.SparseQuantCodec` plus error feedback. The residual is saved in the
  site's job folder after every round, so a restarted site process goes on with it.
- :class:`UpdateDecoder` (server task-result filter): decodes before the aggregator sees the update,
  checking it against the global model's names and shapes. A malformed payload is rejected: one
  error line names the site and the reason, the site's result becomes an error reply (the
  workflow skips it; ``ignore_result_error`` in the job) and the global model is untouched.

Downlink (server -> site), on the ``train`` task:

- :class:`GlobalModelSync` (server component) records which version each site holds (from its
  result header) and asks :class:`~fedsegnet.compression.GlobalModelDownlink` for each site's
  message: the round's encoded difference ``G - R`` (site holds the previous version) or the full
  reference (a new or restarted site, or one whose last round failed), with server-side error
  feedback (:mod:`fedsegnet.compression.downlink`).
- :class:`GlobalModelEncoder` (server task-data filter) asks the sync for the site's message; it
  runs once per site on task data FLARE shares between sites, so it never modifies that data: it
  builds a new DXO and sets it on the site's own copy of the Shareable.
- :class:`GlobalModelDecoder` (site task-data filter) rebuilds full weights from its held copy
  (saved in the site's job folder) plus the difference
  (:func:`~fedsegnet.compression.rebuild_global_model`), and tells the server its version in the
  next result header. A site that does not hold the base version fails that task with a message
  saying so; the server then sends it full weights.

Bytes: :class:`MessageBytes` (server filter, last on task data, first on results) measures each
message as FLARE serialises it (``fobs.dumps``) and fires :data:`MESSAGE_BYTES_EVENT`; the
``RoundRecorder`` logs bytes up/down per site and round to TensorBoard and the round record.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs

from fedsegnet.aggregation.gate import shared_reference
from fedsegnet.compression import (
    MAX_PAYLOAD_VALUES,
    ErrorFeedback,
    GlobalModelDownlink,
    PayloadError,
    SparseQuantCodec,
    atomic_torch_save,
    check_sparse_form,
    decode_payload,
    is_payload,
    rebuild_global_model,
    seeded_generator,
)
from fedsegnet.config import check_job_args
from fedsegnet.errors import FedSegNetError, check_int
from fedsegnet.flare.constants import (
    ERROR_HEADER,
    MESSAGE_BYTES_EVENT,
    BytesProp,
    CodecMeta,
    UpdateMeta,
)
from fedsegnet.flare.resume import check_job_id, pick_residual

RESIDUAL_ROUND_KEY = "fl_round"
"""Key of the round (after which the residual was saved) in a site's saved residual."""

def _site_of_peer(fl_ctx: FLContext) -> str:
    peer = fl_ctx.get_peer_context()
    return peer.get_identity_name(default="?") if peer else "?"


def _run_dir(fl_ctx: FLContext) -> Path:
    return Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))


def _round_of(shareable: Shareable, fl_ctx: FLContext):
    rnd = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
    if rnd is None:
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND)
    if rnd is None:
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    return None if rnd is None else int(rnd)


# codec constructor argument -> the job arg it takes (checked against fedsegnet.config.JOB_ARGS)
_CODEC_JOB_ARGS = {"block": "compression_block", "scope": "compression_scope", "dense_bits": "dense_bits"}


class _CodecArgs:
    """Codec constructor arguments kept as attributes of the same name (FLARE component style)."""

    def _set_codec_args(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.codec = SparseQuantCodec(**kwargs)  # validates every argument now, at job start


# ---------------------------------------------------------------------------------------- uplink
class UpdateEncoder(Filter, _CodecArgs):
    """Site task-result filter: encode the site's update (``WEIGHT_DIFF``) with error feedback.

    Args:
        ratio: share of each tensor's values sent. Defaults to 0.1.
        bits: bits per sent value (4, 8, 16, 32). Defaults to 4.
        block: values per quantization scale (0 = per tensor). Defaults to 256.
        scope: top-k ``"tensor"`` or ``"global"``. Defaults to ``"tensor"``.
        selection: ``"sampled"`` or ``"exact"``. Defaults to ``"sampled"``.
        dense_below: tensors with fewer values go dense. Defaults to 2048.
        dense_bits: bits of dense tensors. Defaults to 8.
        stochastic: stochastic rounding. Defaults to False.
        index_coding: ``"auto"``, ``"varint"``, ``"bitmap"`` or ``"raw"``. Defaults to ``"auto"``.
        sample_size: sample of the sampled threshold. Defaults to 100_000.
        seed: seed of sampling and stochastic rounding (per site and round). Defaults to 0.
        residual_file: file in the site's job folder holding the residual (the previous round's is
            kept beside it as ``<stem>.prev.pt``; both carry their round). Defaults to
            ``"fedsegnet_uplink_residual.pt"``.
        resume_from: id of an interrupted job this one continues: the site starts from the residual
            that job saved after the last round the server completed (see
            :mod:`fedsegnet.flare.resume`). Empty for a fresh start. Defaults to ``""``.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        bits: int = 4,
        block: int = 256,
        scope: str = "tensor",
        selection: str = "sampled",
        dense_below: int = 2048,
        dense_bits: int = 8,
        stochastic: bool = False,
        index_coding: str = "auto",
        sample_size: int = 100_000,
        seed: int = 0,
        residual_file: str = "fedsegnet_uplink_residual.pt",
        resume_from: str = "",
    ):
        Filter.__init__(self)
        check_job_args(
            dict(ratio=ratio, bits=bits, block=block, scope=scope, dense_bits=dense_bits, seed=seed, resume_from=resume_from),
            names=dict(_CODEC_JOB_ARGS, ratio="up_ratio", bits="up_bits"),
        )
        self._set_codec_args(
            ratio=ratio, bits=bits, block=block, scope=scope, selection=selection, dense_below=dense_below,
            dense_bits=dense_bits, stochastic=stochastic, index_coding=index_coding, sample_size=sample_size,
        )  # fmt: skip
        self.seed = seed
        self.residual_file = residual_file
        self.resume_from = resume_from or ""
        if self.resume_from:
            check_job_id(self.resume_from)
        self._ef = None
        self._path = None

    def _feedback(self, fl_ctx: FLContext, rnd) -> ErrorFeedback:
        if self._ef is None:
            site = fl_ctx.get_identity_name()
            self._ef = ErrorFeedback(self.codec, name=f"site {site}")
            self._path = _run_dir(fl_ctx) / self.residual_file
            if self._ef.load(self._path):
                self.log_info(fl_ctx, f"site {site}: restored the uplink residual from {self._path} (after a restart)")
            elif self.resume_from and isinstance(rnd, int):
                self._resume(fl_ctx, site, rnd)
        return self._ef

    def _prev_path(self, path: Path) -> Path:
        return path.with_name(path.stem + ".prev" + path.suffix)

    def _resume(self, fl_ctx: FLContext, site: str, rnd: int):
        """Take the residual of round ``rnd - 1`` from the interrupted job ``resume_from``."""
        workspace = fl_ctx.get_engine().get_workspace()
        old = Path(workspace.get_run_dir(self.resume_from)) / self.residual_file
        states = {}  # each file read once
        for path in (old, self._prev_path(old)):
            if path.exists():
                try:
                    states[path] = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:  # a torn file: skip it, say so
                    self.log_warning(fl_ctx, f"site {site}: cannot read {path} ({e}); not used")
        chosen, why = pick_residual([(p, st.get(RESIDUAL_ROUND_KEY)) for p, st in states.items()], rnd)
        if chosen is not None:
            try:
                self._ef.load_state_dict(states[chosen])
                self.log_info(fl_ctx, f"site {site}: resuming job {self.resume_from}: {why}")
                return
            except ValueError as e:
                why = f"{chosen} is not a residual of this version ({e}); starting from zero"
        self.log_warning(fl_ctx, f"site {site}: resuming job {self.resume_from}: {why}")

    def _save(self, rnd):
        """Keep this round's residual and the previous round's (a resumed job may need either)."""
        if self._path.exists():
            os.replace(self._path, self._prev_path(self._path))
        state = self._ef.state_dict()
        state[RESIDUAL_ROUND_KEY] = rnd if isinstance(rnd, int) else None
        atomic_torch_save(state, self._path)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        report_global_version(shareable, fl_ctx)
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        if dxo.data_kind != DataKind.WEIGHT_DIFF or is_payload(dxo.data):
            return shareable
        site = fl_ctx.get_identity_name()
        try:
            rnd = dxo.get_meta_prop(UpdateMeta.ROUND)
            ef = self._feedback(fl_ctx, rnd)
            if rnd is None:
                rnd = f"call-{ef.rounds}"
            payload = ef.compress(dxo.data, generator=seeded_generator(self.seed, site, rnd, "up"))
            self._save(rnd)
        except (ValueError, OSError) as e:
            message = f"site {site}: cannot encode the update: {e}"
            self.log_error(fl_ctx, message)
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(ERROR_HEADER, message)
            return reply
        meta = dict(dxo.meta)
        meta.update({
            CodecMeta.ENCODED: True,
            UpdateMeta.UPDATE_NORM: ef.last_update_norm,
            UpdateMeta.RESIDUAL_NORM: ef.last_residual_norm,
            UpdateMeta.SENT_VALUES: int(payload["table"][:, 2].sum(dtype=np.int64)),
        })  # fmt: skip
        self.log_debug(fl_ctx, f"site {site}: update encoded, residual norm {ef.last_residual_norm:.4g}")
        return DXO(dxo.data_kind, data=payload, meta=meta).update_shareable(shareable)


def _global_weights(fl_ctx: FLContext):
    model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    try:
        return model[ModelLearnableKey.WEIGHTS] if model is not None else None
    except (KeyError, TypeError):
        return None


class UpdateDecoder(Filter):
    """Server task-result filter: decode a site's payload before the aggregator; reject a bad one.

    The payload is decoded against the global model's names and shapes (less the keys the site
    declares personal), so it can neither declare more values than the model has nor decode to
    anything but a finite update of the model's shapes.

    Args:
        require_encoded: reject plain (unencoded) updates too. Defaults to False (they pass as they are).
        max_values: most values a payload may declare when no global model is at hand to check it
            against. Defaults to :data:`~fedsegnet.compression.MAX_PAYLOAD_VALUES`.
        sparse: how top-k tensors reach the aggregator: ``False``, dense arrays (for aggregators
            that expect them, FLARE's ``InTimeAccumulateWeightedAggregator``); ``True``, as they
            were sent, positions and values (:class:`~fedsegnet.compression.codec.SparseTensor`,
            12 bytes per sent value), which ``AAMAggregator`` keeps without a dense pass;
            ``"packed"``, the received record itself, checked in full here and decoded when read
            (:class:`~fedsegnet.compression.packed.PackedTensor`, about 1 byte per sent value).
            Defaults to False.

    Raises:
        ConfigError: ``max_values`` is not an integer >= 1, or ``sparse`` is not one of
            :data:`~fedsegnet.compression.codec.SPARSE_FORMS`.
    """

    def __init__(self, require_encoded: bool = False, max_values: int = MAX_PAYLOAD_VALUES, sparse: bool | str = False):
        super().__init__()
        self.require_encoded = require_encoded
        self.max_values = check_int("max_values", max_values, 1)
        self.sparse = check_sparse_form(sparse)

    def _reject(self, fl_ctx: FLContext, site: str, rnd, reason: str) -> Shareable:
        message = f"update of site {site} (round {rnd}) rejected: {reason}"
        self.log_error(fl_ctx, f"{message}; the round goes on without it, the global model is untouched")
        reply = make_reply(ReturnCode.BAD_TASK_DATA)
        reply.set_header(ERROR_HEADER, message)
        return reply

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        site, rnd = _site_of_peer(fl_ctx), _round_of(shareable, fl_ctx)
        try:
            dxo = from_shareable(shareable)
        except Exception as e:  # anything a site sends must not reach the aggregator unchecked
            return self._reject(fl_ctx, site, rnd, f"not a DXO ({e})")
        encoded = bool(dxo.get_meta_prop(CodecMeta.ENCODED)) or is_payload(dxo.data)
        if not encoded:
            if self.require_encoded:
                return self._reject(fl_ctx, site, rnd, "the update is not encoded (the job requires encoded updates)")
            return shareable
        reference = _global_weights(fl_ctx)
        if reference is not None:  # keys the site keeps to itself are not in its payload
            reference, reason = shared_reference(reference, dxo.get_meta_prop(UpdateMeta.PERSONAL_KEYS))
            if reason:
                return self._reject(fl_ctx, site, rnd, reason)
        try:
            update = decode_payload(dxo.data, reference=reference, max_values=self.max_values, sparse=self.sparse)
        except PayloadError as e:
            return self._reject(fl_ctx, site, rnd, str(e))
        except Exception as e:  # a payload crafted to crash the decoder is a bad payload too
            return self._reject(fl_ctx, site, rnd, f"undecodable payload ({type(e).__name__}: {e})")
        meta = {k: v for k, v in dxo.meta.items() if k != CodecMeta.ENCODED}
        return DXO(dxo.data_kind, data=update, meta=meta).update_shareable(shareable)


# -------------------------------------------------------------------------------------- downlink
class GlobalModelSync(FLComponent, _CodecArgs):
    """Server component: which version each site holds, and its downlink message.

    The algorithm (the reference, versions, server-side error feedback) is
    :class:`~fedsegnet.compression.GlobalModelDownlink`; this component feeds it the version each
    site confirmed in its last result header (none: the site gets full weights).

    Args: the codec arguments of :class:`UpdateEncoder` (defaults alike), plus
        seed: seed of sampling and stochastic rounding. Defaults to 0.
        first_bits: bits per value of the very first full model (the start of the run, or after a
            server restart), sent dense with per-block scales; every site starts from that same
            quantized model, and the difference to the true global model is sent in later rounds
            (error feedback). 32 sends it exactly. Later full messages (a new or restarted site)
            are always exact float32 copies of what the in-sync sites hold. Defaults to 8.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        bits: int = 4,
        block: int = 256,
        scope: str = "tensor",
        selection: str = "sampled",
        dense_below: int = 2048,
        dense_bits: int = 8,
        stochastic: bool = False,
        index_coding: str = "auto",
        sample_size: int = 100_000,
        seed: int = 0,
        first_bits: int = 8,
    ):
        FLComponent.__init__(self)
        check_job_args(
            dict(ratio=ratio, bits=bits, block=block, scope=scope, dense_bits=dense_bits, seed=seed, first_bits=first_bits),
            names=dict(_CODEC_JOB_ARGS, ratio="down_ratio", bits="down_bits", first_bits="down_first_bits"),
        )
        self._set_codec_args(
            ratio=ratio, bits=bits, block=block, scope=scope, selection=selection, dense_below=dense_below,
            dense_bits=dense_bits, stochastic=stochastic, index_coding=index_coding, sample_size=sample_size,
        )  # fmt: skip
        self.seed = seed
        self.first_bits = first_bits
        # a new instance label per server process: a restarted server's versions never match the old ones
        self.downlink = GlobalModelDownlink(self.codec, first_bits=first_bits, seed=seed, instance=uuid.uuid4().hex)
        self._lock = threading.Lock()
        self._holds: dict[str, str] = {}
        self._carriers: set[str] = set()  # the tasks whose data went through GlobalModelEncoder

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            if fl_ctx.get_prop(FLContextKey.TASK_NAME) not in self._carriers:
                return  # a reply to a task that brought no global model (the key steps of secure aggregation, validate) says nothing about it
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            site = _site_of_peer(fl_ctx)
            version = result.get_header(CodecMeta.GLOBAL_VERSION_HEADER) if result is not None else None
            with self._lock:
                if version:
                    self._holds[site] = version
                else:
                    self._holds.pop(site, None)

    def message_for(self, site: str, weights: dict, rnd, fl_ctx: FLContext) -> tuple[dict, dict]:
        """``(data, downlink_info)`` for ``site`` in round ``rnd``; ``weights`` is the global model (read only)."""
        with self._lock:
            self._carriers.add(fl_ctx.get_prop(FLContextKey.TASK_NAME))
            return self.downlink.message(weights, rnd, self._holds.get(site))


class GlobalModelEncoder(Filter):
    """Server task-data filter: send each site the global model as a difference or in full.

    Args:
        sync_id: id of the :class:`GlobalModelSync` component. Defaults to ``"global_model_sync"``.
    """

    def __init__(self, sync_id: str = "global_model_sync"):
        super().__init__()
        self.sync_id = sync_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        site = _site_of_peer(fl_ctx)
        try:
            dxo = from_shareable(shareable)
            if dxo.data_kind != DataKind.WEIGHTS:
                return shareable
            sync = fl_ctx.get_engine().get_component(self.sync_id)
            if not isinstance(sync, GlobalModelSync):
                self.log_error(fl_ctx, f"no GlobalModelSync component with id {self.sync_id!r}: sending full weights")
                return shareable
            data, info = sync.message_for(site, dxo.data, _round_of(shareable, fl_ctx), fl_ctx)
        except Exception as e:  # a raising data filter would cancel the task for every site
            self.log_exception(fl_ctx, f"downlink encoding for site {site} failed ({e}); sending full weights")
            return shareable
        meta = dict(dxo.meta)  # new dicts: the DXO in `shareable` is shared with the other sites
        meta[CodecMeta.DOWNLINK] = info
        self.log_debug(fl_ctx, f"site {site}: global model sent as {info['mode']} (version {info['version']})")
        return DXO(DataKind.WEIGHTS, data=data, meta=meta).update_shareable(shareable)


class GlobalModelDecoder(Filter):
    """Site task-data filter: rebuild the global model from a difference and the held copy.

    A difference is decoded against the held copy's names and shapes, the first (quantized) model
    against ``max_values``; the result must be finite. A bad message from the server fails the task
    with one line naming the payload and the tensor, and leaves the held copy (in memory and in
    ``base_file``) as it was.

    Args:
        base_file: file in the site's job folder holding the last global model received. Defaults
            to ``"fedsegnet_downlink_base.pt"``.
        max_values: most values the first (quantized) model may declare; a difference is bounded by
            the held copy's shapes instead. Defaults to :data:`~fedsegnet.compression.MAX_PAYLOAD_VALUES`.

    Raises:
        ConfigError: ``max_values`` is not an integer >= 1.
    """

    def __init__(self, base_file: str = "fedsegnet_downlink_base.pt", max_values: int = MAX_PAYLOAD_VALUES):
        super().__init__()
        self.base_file = base_file
        self.max_values = check_int("max_values", max_values, 1)
        self._base = None
        self._version = None

    def _save(self, path: Path):
        atomic_torch_save({"version": self._version, "weights": {k: torch.from_numpy(v) for k, v in self._base.items()}}, path)

    def _load(self, path: Path, fl_ctx: FLContext):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self._base = {k: v.numpy() for k, v in state["weights"].items()}
            self._version = state["version"]
            self.log_info(fl_ctx, f"restored the global model version {self._version} from {path}")
        except Exception as e:
            self.log_warning(fl_ctx, f"cannot read the held global model {path} ({e}); the server will send full weights")

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        info = dxo.get_meta_prop(CodecMeta.DOWNLINK)
        if not info or dxo.data_kind != DataKind.WEIGHTS:
            return shareable
        site = fl_ctx.get_identity_name()
        if not isinstance(info, dict):
            raise FedSegNetError(f"site {site}: the server's downlink info is not a dict ({type(info).__name__})")
        path = _run_dir(fl_ctx) / self.base_file
        if info.get("mode") == "diff":
            if self._version != info.get("base") and path.exists():
                self._load(path, fl_ctx)
            if self._base is None or self._version != info.get("base"):
                raise FedSegNetError(
                    f"site {site}: the server sent the global model as a difference from version "
                    f"{info.get('base')!r}, but this site holds {self._version!r}; it reports holding none, "
                    f"so the server sends full weights next round"
                )
        try:
            new = rebuild_global_model(dxo.data, info, self._base, max_values=self.max_values)
        except PayloadError as e:
            held = f"the held global model (version {self._version!r}) is unchanged" if self._base is not None else "no global model is held"
            raise FedSegNetError(
                f"site {site}: bad global model payload from the server ({info.get('mode')} message for version "
                f"{info.get('version')!r}): {e}; {held}"
            ) from None
        self._base, self._version = new, info.get("version")
        self._save(path)
        fl_ctx.set_prop(CodecMeta.GLOBAL_VERSION_PROP, self._version, private=True, sticky=False)
        meta = {k: v for k, v in dxo.meta.items() if k != CodecMeta.DOWNLINK}
        return DXO(DataKind.WEIGHTS, data=dict(self._base), meta=meta).update_shareable(shareable)


# ---------------------------------------------------------------------------------------- bytes
def report_global_version(shareable: Shareable, fl_ctx: FLContext) -> None:
    """Put the version of the global model this site holds (set by :class:`GlobalModelDecoder` for the
    task) in the result's header, where :class:`GlobalModelSync` reads it."""
    version = fl_ctx.get_prop(CodecMeta.GLOBAL_VERSION_PROP)
    if version:
        shareable.set_header(CodecMeta.GLOBAL_VERSION_HEADER, version)


class GlobalVersionReporter(Filter):
    """Site task-result filter of a task without an update codec (the secure-aggregation masked input):
    tells the server which global model version the site holds, so its next model comes as a
    difference (:class:`UpdateEncoder` does this for the plain ``train`` result)."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        report_global_version(shareable, fl_ctx)
        return shareable


class MessageBytes(Filter):
    """Server filter that measures a message as FLARE serialises it and reports it (never changes it).

    Put it last in the server's task-data filters (``direction="down"``) and first in its
    task-result filters (``direction="up"``), so it sees exactly what travels.

    Args:
        direction: ``"down"`` (task data to a site) or ``"up"`` (a site's result).
    """

    DIRECTIONS = ("up", "down")

    def __init__(self, direction: str):
        super().__init__()
        if direction not in self.DIRECTIONS:
            raise ValueError(f"direction={direction!r}: unknown (valid: {', '.join(self.DIRECTIONS)})")
        self.direction = direction

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            nbytes = len(fobs.dumps(shareable))
        except Exception as e:
            self.log_warning(fl_ctx, f"cannot measure the {self.direction}link message: {e}")
            return shareable
        fl_ctx.set_prop(BytesProp.SITE, _site_of_peer(fl_ctx), private=True, sticky=False)
        fl_ctx.set_prop(BytesProp.DIRECTION, self.direction, private=True, sticky=False)
        fl_ctx.set_prop(BytesProp.ROUND, _round_of(shareable, fl_ctx), private=True, sticky=False)
        fl_ctx.set_prop(BytesProp.NBYTES, nbytes, private=True, sticky=False)
        self.fire_event(MESSAGE_BYTES_EVENT, fl_ctx)
        return shareable
