"""Server-side widget: one JSON record per round, one readable log line per site, site errors surfaced.

:class:`RoundRecorder` listens to FLARE's aggregation events. For every accepted contribution it
keeps the site's update meta (cases, steps, loss, validation Dice of the received global model and
of its local model, label kind) and the size of the update; when the round is done it appends one
JSON line to ``<server job workspace>/fedsegnet_rounds.jsonl``, writes round-level scalars to
TensorBoard next to the per-site streams (``tb_events/server``), and logs a summary. A site that
cannot train answers its tasks with an error reply carrying the message (header
``fedsegnet.error``); the recorder logs it once as an error naming the site and keeps it in the
record of the round.

With the compression filters on (``fedsegnet.flare.compression``), ``MessageBytes`` reports the
serialised size of every message; the record then holds ``bytes_up``/``bytes_down`` per site and in
total, the site's update and error-feedback residual norms and values sent, and TensorBoard gets
``round/bytes_up``, ``round/bytes_down`` and ``bytes_up/<site>``, ``bytes_down/<site>``.

With ``AAMAggregator``, each site's entry gets ``aggregation``: the gate decision, the AAM signals
(quality, performance, cos_dist, norm_ratio, score, prior), the weight and the clip factor, and
TensorBoard gets ``aam_weight/<site>``, ``aam_quality/<site>``, ``aam_cos_dist/<site>`` and so on.

Every record also holds the resident memory (MiB) of the server's job process and of its parent
(``server_rss_mb``, ``server_parent_rss_mb``) and, per site, of the site's job and parent processes
(``rss_mb``, ``parent_rss_mb``, sent in the update meta), so a leak shows in a long run.

A site the round's train task went to (``ResumableScatterAndGather`` says which, see
:data:`~fedsegnet.flare.workflow.ROUND_SITES_EVENT`; else every site of the job) that did not
contribute is listed in ``missing_sites`` as ``{site: {"reason", "detail"}}``, the reason one of
:data:`~fedsegnet.flare.workflow.MISSED_REASONS` (no result when the round closed: ``late``,
``timeout``, ``dead``; an error reply: ``failed``; an update the aggregator or its gate refused:
``refused``; a round not trained because it would pass the site's privacy budget: ``budget``), and
named in a warning with the last round it contributed to.

With ``dp='patient'``, each contributing site's entry holds ``dp`` (its privacy report: epsilon
spent so far, delta, noise multiplier, sampling rate, clip, steps, budget), the record holds
``dp_epsilon_max`` (the largest epsilon any site has spent, over every round the record has seen),
and TensorBoard gets ``dp_epsilon/<site>``.

Once a round's record is written, the recorder fires :data:`~fedsegnet.flare.constants.ROUND_RECORD_EVENT`
with the record, from which the ledger (``fedsegnet.flare.ledger.LedgerKeeper``) builds the round's entry.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.widget import Widget

from fedsegnet.flare.constants import (
    AAM_RECORD_EVENT,
    AAM_RECORD_PROP,
    DP_REFUSED_HEADER,
    ERROR_HEADER,
    MESSAGE_BYTES_EVENT,
    ROUND_RECORD_EVENT,
    ROUND_RECORD_PROP,
    ROUND_RECORDS_FILE,
    BytesProp,
    UpdateMeta,
)
from fedsegnet.flare.workflow import ROUND_SITES_EVENT, ROUND_SITES_PROP
from fedsegnet.memory import job_and_parent_rss_mb


def _weighted_mean(pairs):
    pairs = [(v, w) for v, w in pairs if v is not None and math.isfinite(v) and w]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


class RoundRecorder(Widget):
    """Record per-round, per-site facts on the server.

    Args:
        records_file: file name of the JSON-lines record in the job workspace. Defaults to
            ``"fedsegnet_rounds.jsonl"``.
        tb_folder: TensorBoard folder in the job workspace (FLARE's receiver writes site streams to
            the same folder). Empty to disable. Defaults to ``"tb_events"``.
    """

    def __init__(self, records_file: str = ROUND_RECORDS_FILE, tb_folder: str = "tb_events"):
        super().__init__()
        self.records_file = records_file
        self.tb_folder = tb_folder
        self._run_dir = None
        self._sites = {}
        self._errors = []
        self._reported = set()
        self._round_start = None
        self._tb = None
        self._bytes = {}  # round -> site -> {"bytes_up": n, "bytes_down": n}
        self._bytes_lock = threading.Lock()
        self._aggregation = None  # the aggregator's record of the current round
        self._last_seen = {}  # site -> last round it contributed to
        self._round_sites = None  # the workflow's {"asked", "unanswered"} of the current round
        self._failed = {}  # site -> why its train result of the current round is an error reply
        self._budget = {}  # site -> why it did not train the current round (its privacy budget)
        self._epsilon = {}  # site -> epsilon it has spent (the latest privacy report)
        self._accepted, self._refused = set(), set()  # sites whose update of the round the aggregator took / refused

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            self._run_dir = engine.get_workspace().get_run_dir(fl_ctx.get_job_id())
        elif event_type == AppEventType.ROUND_STARTED:
            self._sites, self._failed, self._accepted, self._refused, self._round_sites = {}, {}, set(), set(), None
            self._budget = {}
            self._round_start = time.time()
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._collect(fl_ctx)
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            (self._accepted if fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED) else self._refused).add(_peer_site(fl_ctx))
        elif event_type == ROUND_SITES_EVENT:
            self._round_sites = fl_ctx.get_prop(ROUND_SITES_PROP)
        elif event_type == AppEventType.ROUND_DONE:
            self._write(fl_ctx)
        elif event_type == MESSAGE_BYTES_EVENT:
            self._count_bytes(fl_ctx)
        elif event_type == AAM_RECORD_EVENT:
            self._aggregation = fl_ctx.get_prop(AAM_RECORD_PROP)
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            self._check_error_reply(fl_ctx)
        elif event_type == EventType.END_RUN and self._tb is not None:
            self._tb.close()
            self._tb = None

    def _count_bytes(self, fl_ctx: FLContext):
        site, rnd = fl_ctx.get_prop(BytesProp.SITE), fl_ctx.get_prop(BytesProp.ROUND)
        key = f"bytes_{fl_ctx.get_prop(BytesProp.DIRECTION)}"
        with self._bytes_lock:  # task-data filters of different sites run concurrently
            per_site = self._bytes.setdefault(rnd, {}).setdefault(site, {"bytes_up": 0, "bytes_down": 0})
            per_site[key] += int(fl_ctx.get_prop(BytesProp.NBYTES) or 0)

    def _check_error_reply(self, fl_ctx: FLContext):
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if result is None:
            return
        site = _peer_site(fl_ctx)
        message = result.get_header(ERROR_HEADER)
        rc = result.get_return_code(ReturnCode.OK)
        if rc != ReturnCode.OK and fl_ctx.get_prop(FLContextKey.TASK_NAME) == AppConstants.TASK_TRAIN:
            if result.get_header(DP_REFUSED_HEADER):
                self._budget[site] = message or "privacy budget"
                self.log_warning(fl_ctx, f"site {site} did not train: {self._budget[site]}", fire_event=False)
                return
            self._failed[site] = message or f"error reply (return code {rc})"
        if not message:
            return
        if (site, message) in self._reported:
            return
        self._reported.add((site, message))
        self._errors.append({"site": site, "message": message})
        self.log_error(fl_ctx, f"site {site} reported an error: {message}", fire_event=False)

    def _collect(self, fl_ctx: FLContext):
        peer_ctx = fl_ctx.get_peer_context()
        if peer_ctx is None:
            return
        site = peer_ctx.get_identity_name(default="?")
        shareable = peer_ctx.get_prop(FLContextKey.SHAREABLE)
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return
        entry = {k.split(".", 1)[1]: dxo.get_meta_prop(k) for k in UpdateMeta.ALL}
        entry["n_tensors"] = len(dxo.data or {})
        entry["n_values"] = int(sum(getattr(v, "size", 0) for v in (dxo.data or {}).values()))
        self._sites[site] = entry

    def _write(self, fl_ctx: FLContext):
        if self._run_dir is None:
            return
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        with self._bytes_lock:
            counted = self._bytes.pop(rnd, {})
        for site, nbytes in counted.items():
            self._sites.setdefault(site, {}).update(nbytes)
        aggregation, self._aggregation = self._aggregation, None
        if aggregation:
            for site, entry in aggregation.get("sites", {}).items():
                self._sites.setdefault(site, {})["aggregation"] = _jsonable(entry)
        sites = dict(sorted(self._sites.items()))
        missing = self._missing(fl_ctx, sites)
        self._last_seen.update(dict.fromkeys((s for s in sites if "n_train" in sites[s] and s not in missing), rnd))
        for site, why in missing.items():
            last = self._last_seen.get(site)
            self.log_warning(
                fl_ctx, f"round {rnd}: site {site} did not contribute: {why['reason']} ({why['detail']}); last "
                f"contribution in round {'none' if last is None else last}; the round goes on without it", fire_event=False,
            )  # fmt: skip
        memory = job_and_parent_rss_mb()
        record = {
            "round": rnd,
            "time": time.time(),
            "seconds": None if self._round_start is None else time.time() - self._round_start,
            "sites": sites,
            "val_dice_global": _weighted_mean(
                (s.get("val_dice_global"), s.get("n_train")) for s in sites.values()
            ),
            "val_dice_local": _weighted_mean((s.get("val_dice_local"), s.get("n_train")) for s in sites.values()),
            "errors": list(self._errors),
            "missing_sites": missing,
            "server_rss_mb": memory["rss_mb"],
            "server_parent_rss_mb": memory["parent_rss_mb"],
        }
        if aggregation:
            record["aggregation_method"] = aggregation.get("method")
            if aggregation.get("secure_aggregation"):  # the secure round's survivors, drop-outs and plan
                record["secure_aggregation"] = json.loads(json.dumps(aggregation["secure_aggregation"], default=str))
        for site, s in sites.items():
            if isinstance(s.get("dp"), dict) and s["dp"].get("epsilon") is not None:
                self._epsilon[site] = float(s["dp"]["epsilon"])
        if self._epsilon:
            record["dp_epsilon_max"] = max(self._epsilon.values())
        if counted:
            record["bytes_up"] = sum(s.get("bytes_up", 0) for s in sites.values())
            record["bytes_down"] = sum(s.get("bytes_down", 0) for s in sites.values())
        self._errors = []
        with open(os.path.join(self._run_dir, self.records_file), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._write_tb(record)
        fl_ctx.set_prop(ROUND_RECORD_PROP, record, private=True, sticky=False)
        self.fire_event(ROUND_RECORD_EVENT, fl_ctx)  # the ledger's round entry (fedsegnet.flare.ledger)
        for site, s in sites.items():
            self.log_info(
                fl_ctx,
                f"round {rnd} {site}: n_train={s.get('n_train')} steps={s.get('local_steps')} "
                f"loss={_fmt(s.get('train_loss'))} val Dice global={_fmt(s.get('val_dice_global'))} "
                f"local={_fmt(s.get('val_dice_local'))} kind={s.get('label_kind')}"
                + (f" bytes up={s['bytes_up']:,} down={s['bytes_down']:,}" if "bytes_up" in s else ""),
                fire_event=False,
            )
        self.log_info(
            fl_ctx,
            f"round {rnd} done: {len(sites)} site(s), val Dice of the received global model "
            f"{_fmt(record['val_dice_global'])}, of the local models {_fmt(record['val_dice_local'])}",
            fire_event=False,
        )

    def _missing(self, fl_ctx: FLContext, sites: dict) -> dict[str, dict]:
        """``{site: {"reason", "detail"}}`` of the sites asked this round whose update is not in the aggregate."""
        round_sites = self._round_sites or {}
        asked = round_sites.get("asked") or self._job_sites(fl_ctx)
        unanswered = round_sites.get("unanswered") or {}
        missing = {}
        for site in sorted(asked):
            entry = sites.get(site, {})
            decision = entry.get("aggregation") or {}
            if site in unanswered:
                missing[site] = dict(unanswered[site])
            elif site in self._budget:
                missing[site] = {"reason": "budget", "detail": self._budget[site]}
            elif site in self._failed:
                missing[site] = {"reason": "failed", "detail": self._failed[site]}
            elif (site in self._refused and site not in self._accepted) or (decision and not decision.get("accepted")):
                missing[site] = {"reason": "refused", "detail": decision.get("gate") or "refused by the aggregator (see the log)"}
            elif "n_train" not in entry:  # no workflow report (another controller): no update arrived
                missing[site] = {"reason": "late", "detail": "no update when the round closed"}
        return missing

    @staticmethod
    def _job_sites(fl_ctx: FLContext) -> list[str]:
        try:
            return [c.name for c in fl_ctx.get_engine().get_clients()]
        except Exception:  # an engine without a client list (unit tests)
            return []

    def _write_tb(self, record: dict):
        if not self.tb_folder:
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self._run_dir, self.tb_folder, "server"))
        for key in ("val_dice_global", "val_dice_local", "server_rss_mb", "server_parent_rss_mb"):
            if record.get(key) is not None:
                self._tb.add_scalar(f"round/{key}", record[key], global_step=record["round"])
        for key in ("bytes_up", "bytes_down"):
            if key in record:
                self._tb.add_scalar(f"round/{key}", record[key], global_step=record["round"])
            for site, s in record["sites"].items():
                if key in s:
                    self._tb.add_scalar(f"{key}/{site}", s[key], global_step=record["round"])
        for site, s in record["sites"].items():
            if isinstance(s.get("dp"), dict) and s["dp"].get("epsilon") is not None:
                self._tb.add_scalar(f"dp_epsilon/{site}", s["dp"]["epsilon"], global_step=record["round"])
            for key in ("weight", "quality", "performance", "cos_dist", "norm_ratio", "agreement"):
                value = (s.get("aggregation") or {}).get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"aam_{key}/{site}", value, global_step=record["round"])
        self._tb.flush()


def _peer_site(fl_ctx: FLContext) -> str:
    peer_ctx = fl_ctx.get_peer_context()
    return peer_ctx.get_identity_name(default="?") if peer_ctx else "?"


def _jsonable(entry: dict) -> dict:
    out = {}
    for k, v in entry.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, (list, tuple)):
            v = [str(x) for x in v]
        elif not isinstance(v, (str, int, float, bool, type(None))):
            v = str(v)
        out[k] = v
    return out


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"
