"""The ledger in the jobs: the server keeps it, every train task carries its signed head, sites witness it.

Server (``config_fed_server.json``):

- :class:`LedgerKeeper` (component ``ledger``) keeps ``<server job workspace>/fedsegnet_ledger``
  (:class:`~fedsegnet.ledger.store.Ledger`). When the initial global model is loaded it appends the
  ``job_start`` entry (and, for ``resume_from``, continues the interrupted job's ledger first); after
  every round it appends a ``round`` entry built from :class:`~fedsegnet.flare.widgets.RoundRecorder`'s
  record (:data:`ROUND_RECORD_EVENT`), the global model's hash before and after, and the payload
  hashes and witness records its filters collected; at the end of the run a ``job_end`` entry with
  the sha256 of the final and best model files. It signs the tree head after each entry with the
  server's startup-kit key (``startup/server.key``); without a kit (the simulator) with a key
  generated for the run, and says so in the log and in every head.
- :class:`LedgerTaskFilter` (task-data filter of ``train``, last) puts the site's witness bundle
  (:meth:`~fedsegnet.ledger.store.Ledger.witness_bundle`) into the task's header :data:`BUNDLE_HEADER`.
- :class:`LedgerResultFilter` (task-result filter of ``train``, first) hashes the payload as
  received (:func:`~fedsegnet.ledger.canonical.hash_payload`) and hands it, with the site's witness
  record and certificate from the update's meta, to the keeper.

Site (``config_fed_client.json``):

- :class:`SiteLedgerWitness` (component ``ledger_witness``) holds one
  :class:`~fedsegnet.ledger.witness.SiteWitness` per ledger under
  ``<site workspace>/fedsegnet_ledger_witness/<log id>/``, kept across jobs so that a resumed job is
  checked against what the site saw before. Its key is the kit's ``startup/client.key`` (a key
  generated for the run without a kit); the server's certificate must carry the name in the kit's
  ``fed_client.json`` (``servers[0].identity``) and be issued by the kit's ``rootCA.pem``.
- ``SegLearner.train`` calls :meth:`SiteLedgerWitness.check` before training: a head that is not
  consistent with what the site saw, or that leaves out the site's last payload, makes the site
  refuse the task with the reason (an error reply; the round goes on with the other sites and the
  server logs why); else the site's signature of the head goes back in the update's meta.
- :class:`LedgerPayloadRecorder` (task-result filter of ``train``, last) hashes the payload as it
  leaves, so the next head must include it.

``docs/ledger.md`` has the protocol, the files and the threat model.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.widget import Widget

import fedsegnet
from fedsegnet.flare.constants import ROUND_RECORD_EVENT, ROUND_RECORD_PROP, SECURE_AGGREGATION, UpdateMeta
from fedsegnet.flare.widgets import _peer_site as _peer
from fedsegnet.ledger import (
    KEY_SOURCE_GENERATED,
    LEDGER_FOLDER,
    Ledger,
    LedgerError,
    Signer,
    SiteWitness,
    generate_signer,
    hash_payload,
    hash_weights,
    job_end_entry,
    job_start_entry,
    round_entry,
    sha256_file,
    verify_witness,
)
from fedsegnet.ledger.signing import check_certificate, load_certificate

BUNDLE_HEADER = "fedsegnet.ledger_bundle"
"""Task header: the site's witness bundle (plain JSON)."""
WITNESS_META = "fedsegnet.ledger_witness"
"""Update meta: the site's witness record of the head it was sent with the task."""
CERT_META = "fedsegnet.ledger_cert"
"""Update meta: the site's certificate (PEM) the witness record is signed with."""
WITNESS_FOLDER = "fedsegnet_ledger_witness"
"""Folder in a site's workspace (not the job's: it outlives jobs) with one witness folder per ledger."""
LEDGER_ID = "ledger"
WITNESS_ID = "ledger_witness"
_LOG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_META_KEYS = ("n_train", "local_steps", "label_kind", "train_loss", "val_dice_global", "val_dice_local",
              "label_agreement", "sent_values")  # fmt: skip


def _weights_of(model) -> dict | None:
    """The weights dict of a ``ModelLearnable`` (or a plain dict), else None."""
    if model is None:
        return None
    weights = model.get(ModelLearnableKey.WEIGHTS) if ModelLearnableKey.WEIGHTS in model else model
    return weights if isinstance(weights, dict) and weights else None


def _kit_signer(startup: Path, name: str, log) -> Signer:
    """The kit's key pair in ``startup``, else a key generated for this run (logged)."""
    try:
        return Signer.from_kit(startup)
    except LedgerError:
        log(
            f"no startup-kit key in {startup}: the ledger is signed with a key generated for this run "
            "('generated, not from a kit'), which proves its integrity, not who signed it"
        )
        return generate_signer(name)


class LedgerKeeper(Widget):
    """The server's ledger of the job (see the module docstring).

    Args:
        folder: ledger folder in the server's job workspace. Defaults to ``"fedsegnet_ledger"``.
        persistor_id: the persistor whose model files the ``job_end`` entry hashes and whose
            ``resume_point`` names the interrupted job's ledger. Defaults to ``"persistor"``.
        sync_id: the downlink codec component (``GlobalModelSync``) whose settings each round
            entry records; missing is fine. Defaults to ``"global_model_sync"``.
    """

    def __init__(self, folder: str = LEDGER_FOLDER, persistor_id: str = "persistor", sync_id: str = "global_model_sync"):
        super().__init__()
        self.folder = folder
        self.persistor_id = persistor_id
        self.sync_id = sync_id
        self.ledger: Ledger | None = None
        self.signer: Signer | None = None
        self.root_ca = None
        self._lock = threading.Lock()
        self._run_dir = None
        self._before = None  # hash of the global model the current round started from
        self._received = {}  # site -> {"round", "payload_sha256", "witness"} not yet in an entry
        self._last_round = None
        self._seconds = 0.0  # server time spent on the ledger since the last round entry (bundles, checks, entry, head)
        self.error = None  # why the ledger could not be kept (logged once; the job goes on without it)

    # ---- events ------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        try:
            if event_type == EventType.START_RUN:
                self._start(fl_ctx)
            elif event_type == AppEventType.INITIAL_MODEL_LOADED:
                self._open(fl_ctx)
            elif event_type == AppEventType.ROUND_STARTED:
                if self._before is None:  # else the last round's global_after: the workflow sends that model on
                    t0 = time.perf_counter()
                    self._before = self._model_hash(fl_ctx)
                    self._seconds += time.perf_counter() - t0
            elif event_type == ROUND_RECORD_EVENT:
                self._round(fl_ctx)
            elif event_type == EventType.END_RUN:
                self._end(fl_ctx)
        except (LedgerError, OSError) as exc:
            self._fail(fl_ctx, f"{event_type}: {exc}")

    def _fail(self, fl_ctx: FLContext, problem: str):
        if self.error is None:
            self.log_error(fl_ctx, f"the ledger stops here and records nothing more: {problem}", fire_event=False)
        self.error = problem
        self.ledger = None

    def _start(self, fl_ctx: FLContext):
        workspace = fl_ctx.get_engine().get_workspace()
        self._run_dir = Path(workspace.get_run_dir(fl_ctx.get_job_id()))
        startup = Path(workspace.get_startup_kit_dir())
        self.signer = _kit_signer(startup, fl_ctx.get_identity_name() or "server",
                                  lambda m: self.log_warning(fl_ctx, m, fire_event=False))  # fmt: skip
        root = startup / "rootCA.pem"
        self.root_ca = load_certificate(root) if root.is_file() and self.signer.key_source != KEY_SOURCE_GENERATED else None

    def _open(self, fl_ctx: FLContext):
        if self._run_dir is None or self.ledger is not None or self.error:
            return
        folder = self._run_dir / self.folder
        previous, note = self._previous_ledger(fl_ctx)
        with self._lock:
            if (folder / "LEDGER.json").exists():
                self.ledger = Ledger.open(folder)
                self.log_info(fl_ctx, f"ledger {folder}: reopened with {self.ledger.size} entries", fire_event=False)
            else:
                log_id = previous.log_id if previous is not None else f"{fl_ctx.get_job_id()}-{uuid.uuid4().hex[:8]}"
                persistor = fl_ctx.get_engine().get_component(self.persistor_id)
                fields = {"job_id": fl_ctx.get_job_id(), "global_model": self._model_hash(fl_ctx),
                          "rounds_completed": int(getattr(persistor, "rounds_completed", 0) or 0)}  # fmt: skip
                self.ledger = Ledger.create(folder, log_id, resume_from=previous, resume_fields=fields if previous else None)
                engine = fl_ctx.get_engine()
                config = Path(fl_ctx.get_engine().get_workspace().get_server_app_config_file_path(fl_ctx.get_job_id()))
                if not config.is_file():
                    raise LedgerError(f"{config}: the server's job config is missing; the job_start entry records its sha256")
                settings = {"resume_from": note} if note else None
                self.ledger.append(job_start_entry(
                    job_id=fl_ctx.get_job_id(),
                    job_config_sha256=sha256_file(config),
                    code_version=f"fedsegnet {fedsegnet.__version__}",
                    participants=sorted(c.name for c in engine.get_clients()),
                    server=self.signer.name,
                    settings=settings,
                ))  # fmt: skip
                self.ledger.sign_head(self.signer)
                self.log_info(
                    fl_ctx, f"ledger {folder}: log {log_id}, signed by {self.signer.name} ({self.signer.key_source})"
                    + (f", continuing {previous.folder}" if previous is not None else ""), fire_event=False,
                )  # fmt: skip

    def _previous_ledger(self, fl_ctx: FLContext):
        """The interrupted job's ledger when the persistor resumed one, and what to note about it."""
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        point = getattr(persistor, "resume_point", None)
        if point is None:
            return None, None
        folder = Path(point.run_dir) / self.folder
        if not (folder / "LEDGER.json").exists():
            self.log_warning(
                fl_ctx, f"resume_from={point.job_id!r}: that job left no ledger ({folder}); this ledger starts anew "
                "and its job_start entry names the job it continues", fire_event=False,
            )  # fmt: skip
            return None, f"{point.job_id} (no ledger)"
        previous = Ledger.open(folder)
        if previous.last_head is None:
            raise LedgerError(f"{folder}: the interrupted job's ledger has no signed head to continue from")
        return previous, point.job_id

    def _model_hash(self, fl_ctx: FLContext) -> str | None:
        weights = _weights_of(fl_ctx.get_prop(AppConstants.GLOBAL_MODEL))
        return None if weights is None else hash_weights(weights)

    # ---- the filters' side ---------------------------------------------------------------------
    def bundle_for(self, site: str) -> dict | None:
        """The witness bundle of the next task to ``site``; None while there is no ledger."""
        t0 = time.perf_counter()
        with self._lock:
            if self.ledger is None or self.ledger.last_head is None:
                return None
            bundle = self.ledger.witness_bundle(site)
            self._seconds += time.perf_counter() - t0
        return bundle

    def received(self, site: str, round: int | None, payload_sha256: str, witness, cert_pem, fl_ctx: FLContext,
                 seconds: float = 0.0):  # fmt: skip
        """Note a payload as it arrived, and check the witness record that came with it.

        A witness record that does not verify under the site's certificate (issued by the project's
        root CA, named for the site) is logged and dropped: ``verify`` then reports the round's
        missing witness. ``seconds``: time already spent on it (hashing the payload), counted as
        the ledger's.
        """
        t0 = time.perf_counter() - seconds
        record = None
        if witness is not None:
            try:
                named = witness.get("site") if isinstance(witness, dict) else None
                if named != site:
                    raise LedgerError(f"the witness record names {named!r}")
                cert = check_certificate(cert_pem, site, self.root_ca, at=witness.get("time"), where=f"{site}'s certificate")
                verify_witness(witness, cert, self.root_ca, where=f"{site}'s witness")
                record = witness
                with self._lock:
                    if self.ledger is not None:
                        self.ledger.add_cert(cert)
            except (LedgerError, TypeError, ValueError) as exc:
                self.log_warning(fl_ctx, f"site {site}: its witness of the ledger head is not kept: {exc}", fire_event=False)
        with self._lock:
            self._received[site] = {"round": round, "payload_sha256": payload_sha256, "witness": record}
            self._seconds += time.perf_counter() - t0

    # ---- entries ---------------------------------------------------------------------------------
    def _round(self, fl_ctx: FLContext):
        record = fl_ctx.get_prop(ROUND_RECORD_PROP)
        if self.ledger is None or not isinstance(record, dict):
            return
        rnd = int(record["round"])
        t0 = time.perf_counter()
        after = self._model_hash(fl_ctx)
        with self._lock:
            received, self._received = self._received, {}
            missing = record.get("missing_sites") or {}
            sites, refused, witnesses, unhashed = {}, {}, {}, []
            for site, s in sorted((record.get("sites") or {}).items()):
                if site in missing or "n_train" not in s:
                    continue
                got = received.get(site)
                if got is None or got["round"] != rnd:
                    unhashed.append(site)
                    continue
                agg = s.get("aggregation") or {}
                sites[site] = {
                    "payload_sha256": got["payload_sha256"],
                    "meta": {k: s.get(k) for k in _META_KEYS if s.get(k) is not None},
                    "weight": agg.get("weight"),
                    "signals": {k: v for k, v in agg.items() if k != "weight"},
                    "epsilon": (s.get("dp") or {}).get("epsilon"),
                    "bytes_up": s.get("bytes_up"),
                }
            for site, why in sorted(missing.items()):
                got = received.get(site)
                rec = {"payload_sha256": None, "reason": f"{why.get('reason')}: {why.get('detail')}"}
                if got is not None:
                    rec.update(payload_sha256=got["payload_sha256"], round=got["round"])
                refused[site] = rec
            for site, got in received.items():  # late payloads of earlier rounds (after their entry was written)
                if site not in sites and site not in refused:
                    refused[site] = {"payload_sha256": got["payload_sha256"], "round": got["round"],
                                     "reason": f"late: its update of round {got['round']} arrived after that round's entry"}  # fmt: skip
            for site, got in received.items():
                if got["witness"] is not None:
                    witnesses[site] = got["witness"]
            aggregation = {"method": record.get("aggregation_method"), "asked": sorted(set(record.get("sites") or {}) | set(missing))}
            if unhashed:
                aggregation["unhashed_sites"] = unhashed
            self.ledger.append(round_entry(
                rnd, global_before=self._before or after, global_after=after, sites=sites, refused=refused,
                aggregation=aggregation, witnesses=witnesses,
                # under secure aggregation a site sends a masked dense ring input: no codec was used
                codec={} if aggregation["method"] == SECURE_AGGREGATION else self._codec(fl_ctx),
            ))  # fmt: skip
            head = self.ledger.sign_head(self.signer)
            self._last_round = rnd
            self._before = after
            seconds, self._seconds = self._seconds + time.perf_counter() - t0, 0.0
            nbytes = len(self.ledger.line(head["size"] - 1))
        self.log_info(
            fl_ctx, f"ledger round {rnd}: entry {head['size'] - 1} ({nbytes:,} bytes), head of size {head['size']} signed; "
            f"{1e3 * seconds:.1f} ms of server time for the ledger this round", fire_event=False,
        )  # fmt: skip
        if unhashed:
            self.log_error(
                fl_ctx, f"round {rnd}: no payload hash for {', '.join(unhashed)} (an update that could not be hashed, or the job's task_result_filters lack "
                "fedsegnet.flare.ledger.LedgerResultFilter, first for 'train'); the ledger cannot record their updates",
                fire_event=False,
            )  # fmt: skip

    def _codec(self, fl_ctx: FLContext) -> dict:
        sync = fl_ctx.get_engine().get_component(self.sync_id)
        if sync is None:
            return {}
        return {k: getattr(sync, k) for k in ("ratio", "bits", "block", "scope", "dense_bits", "first_bits") if hasattr(sync, k)}

    def _end(self, fl_ctx: FLContext):
        if self.ledger is None:
            return
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        models = {}
        app_dir = self._run_dir / "app_server"
        for name, attr, default in (("final", "global_model_file_name", "FL_global_model.pt"),
                                    ("best", "best_global_model_file_name", "best_FL_global_model.pt")):  # fmt: skip
            path = app_dir / (getattr(persistor, attr, None) or default)
            if path.is_file():
                models[name] = {"file": path.name, "sha256": sha256_file(path)}
        if "final" in models and self._last_round is not None:
            models["final"]["round"] = self._last_round
        with self._lock:
            self.ledger.append(job_end_entry(last_round=self._last_round, reason="run ended", models=models))
            head = self.ledger.sign_head(self.signer)
        self.log_info(fl_ctx, f"ledger {self.ledger.folder}: {head['size']} entries, last head signed", fire_event=False)


def _keeper(fl_ctx: FLContext, keeper_id: str) -> LedgerKeeper | None:
    keeper = fl_ctx.get_engine().get_component(keeper_id)
    return keeper if isinstance(keeper, LedgerKeeper) else None


class LedgerTaskFilter(Filter):
    """Server task-data filter: the ledger's witness bundle for the site into the task's header.

    Args:
        ledger_id: the :class:`LedgerKeeper` component. Defaults to ``"ledger"``.
    """

    def __init__(self, ledger_id: str = LEDGER_ID):
        super().__init__()
        self.ledger_id = ledger_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        keeper = _keeper(fl_ctx, self.ledger_id)
        if keeper is None:
            return shareable
        try:
            bundle = keeper.bundle_for(_peer(fl_ctx))
        except (LedgerError, OSError) as exc:  # the ledger stops; the training does not
            keeper._fail(fl_ctx, f"bundle for {_peer(fl_ctx)}: {exc}")
            return shareable
        if bundle is not None:
            shareable.set_header(BUNDLE_HEADER, json.dumps(bundle))
        return shareable


class LedgerResultFilter(Filter):
    """Server task-result filter (first): the payload's hash as received, for the ledger.

    Args:
        ledger_id: the :class:`LedgerKeeper` component. Defaults to ``"ledger"``.
    """

    def __init__(self, ledger_id: str = LEDGER_ID):
        super().__init__()
        self.ledger_id = ledger_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        keeper = _keeper(fl_ctx, self.ledger_id)
        if keeper is None:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:  # an error reply: no payload
            return shareable
        if not dxo.data:
            return shareable
        rnd = dxo.get_meta_prop(UpdateMeta.ROUND)
        try:
            t0 = time.perf_counter()
            payload = hash_payload(dxo.data)
            keeper.received(_peer(fl_ctx), None if isinstance(rnd, bool) or not isinstance(rnd, int) else rnd, payload,
                            dxo.get_meta_prop(WITNESS_META), dxo.get_meta_prop(CERT_META), fl_ctx,
                            seconds=time.perf_counter() - t0)  # fmt: skip
        except (LedgerError, OSError) as exc:  # a payload that cannot be hashed is the decoder's to refuse
            self.log_warning(fl_ctx, f"site {_peer(fl_ctx)}: its update is not hashed for the ledger: {exc}", fire_event=False)
        return shareable


def _kit_server_name(startup: Path) -> str | None:
    """The server's certificate name a kit expects (``fed_client.json``: ``servers[0].identity``)."""
    try:
        config = json.loads((startup / "fed_client.json").read_text())
        return str(config["servers"][0]["identity"]) or None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


class SiteLedgerWitness(FLComponent):
    """A site's witness of the server's ledgers (see the module docstring).

    Args:
        folder: witness folder in the site's workspace root. Defaults to ``"fedsegnet_ledger_witness"``.
    """

    def __init__(self, folder: str = WITNESS_FOLDER):
        super().__init__()
        self.folder = folder
        self.signer: Signer | None = None
        self.root_ca = None
        self.server: str | None = None
        self._root: Path | None = None
        self._witnesses: dict[str, SiteWitness] = {}
        self._log_id: str | None = None  # the one ledger this job's heads must belong to
        self.last_seconds = None  # how long the last check + signature took
        self._lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            workspace = fl_ctx.get_engine().get_workspace()
            self._root = Path(workspace.get_root_dir()) / self.folder
            startup = Path(workspace.get_startup_kit_dir())
            self.signer = _kit_signer(startup, fl_ctx.get_identity_name(),
                                      lambda m: self.log_warning(fl_ctx, m, fire_event=False))  # fmt: skip
            if self.signer.key_source != KEY_SOURCE_GENERATED:
                root = startup / "rootCA.pem"
                self.root_ca = root if root.is_file() else None
                self.server = _kit_server_name(startup)

    def check(self, bundle_json: str) -> tuple[dict, str]:
        """Check the bundle of a train task; returns ``(witness record, this site's certificate PEM)``.

        Raises:
            WitnessError: the reason the site refuses the task (naming sizes and rounds).
            LedgerError: a bundle that is not JSON, names a ledger id that is not a plain name, or
                names another ledger than the one this job's earlier heads belong to.
        """
        from fedsegnet.ledger import WitnessError

        site = self.signer.name
        try:
            bundle = json.loads(bundle_json)
            log_id = bundle["head"]["log_id"]
        except (TypeError, ValueError, KeyError) as exc:
            raise WitnessError(site, f"the ledger bundle is malformed ({exc})") from None
        if not isinstance(log_id, str) or not _LOG_ID.match(log_id):
            raise WitnessError(site, f"the ledger head names log id {log_id!r}, which is not a plain name")
        with self._lock:
            if self._log_id is not None and log_id != self._log_id:
                raise WitnessError(
                    site, f"the head belongs to ledger {log_id!r}, but this job's earlier heads to {self._log_id!r} "
                    "(the server switched ledgers mid-job)",
                )  # fmt: skip
            witness = self._witnesses.get(log_id)
            if witness is None:
                server = self.server or str(bundle["head"].get("signer") or "")
                witness = SiteWitness(self._root / log_id, self.signer, server, root_ca=self.root_ca)
                self._witnesses[log_id] = witness
            t0 = time.perf_counter()
            record = witness.witness(bundle)
            self._log_id = log_id
        self.last_seconds = time.perf_counter() - t0
        return record, self.signer.cert_pem

    def record_payload(self, round: int, payload_sha256: str) -> None:
        """Remember the payload that leaves for ``round`` (the next head must include it)."""
        with self._lock:
            if self._log_id is not None:
                self._witnesses[self._log_id].record_payload(round, payload_sha256)


class LedgerPayloadRecorder(Filter):
    """Site task-result filter (last): the payload's hash as it leaves, for the site's witness.

    Args:
        witness_id: the :class:`SiteLedgerWitness` component. Defaults to ``"ledger_witness"``.
    """

    def __init__(self, witness_id: str = WITNESS_ID):
        super().__init__()
        self.witness_id = witness_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        witness = fl_ctx.get_engine().get_component(self.witness_id)
        if not isinstance(witness, SiteLedgerWitness):
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        rnd = dxo.get_meta_prop(UpdateMeta.ROUND)
        if dxo.data and rnd is not None and dxo.get_meta_prop(WITNESS_META) is not None:
            t0 = time.perf_counter()
            try:
                witness.record_payload(int(rnd), hash_payload(dxo.data))
            except (LedgerError, OSError) as exc:  # the ledger's record is lost, never the update
                self.log_warning(fl_ctx, f"ledger: payload of round {rnd} not recorded: {exc}", fire_event=False)
                return shareable
            self.log_info(fl_ctx, f"ledger: payload of round {rnd} hashed and recorded in {1e3 * (time.perf_counter() - t0):.1f} ms",
                          fire_event=False)  # fmt: skip
        return shareable


def witness_task(data: Shareable, fl_ctx: FLContext, witness_id: str = WITNESS_ID) -> dict:
    """What a site's update carries for the ledger: check the train task's bundle and sign its head.

    Args:
        data: the train task (its header :data:`BUNDLE_HEADER`).
        fl_ctx: the site's context (its engine has the :class:`SiteLedgerWitness` component).
        witness_id: that component's id. Defaults to ``"ledger_witness"``.

    Returns:
        ``{WITNESS_META: record, CERT_META: pem}`` for the update's meta; ``{}`` when the task
        carries no bundle (a job without the ledger) or the site has no witness component.

    Raises:
        WitnessError: the head is refused (the reason names sizes and rounds).
        LedgerError: the site's witness file cannot be read or written.
    """
    bundle = data.get_header(BUNDLE_HEADER)
    if bundle is None:
        return {}
    witness = fl_ctx.get_engine().get_component(witness_id)
    if not isinstance(witness, SiteLedgerWitness) or witness.signer is None:
        return {}
    record, cert = witness.check(bundle)
    witness.log_info(fl_ctx, f"ledger head of size {record['size']} checked and countersigned in "
                             f"{1e3 * witness.last_seconds:.1f} ms", fire_event=False)  # fmt: skip
    return {WITNESS_META: record, CERT_META: cert}
