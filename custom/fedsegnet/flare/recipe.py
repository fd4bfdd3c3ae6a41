"""The jobs as FLARE Recipes (``SimEnv``, ``PocEnv``, ``ProdEnv``), built from the same components and
job args as ``jobs/fedavg`` and ``jobs/fedsegnet``.

``FedSegNetRecipe(...).export(DIR)`` writes the job folder ``DIR/fedsegnet``, equal to
``jobs/fedsegnet``, and ``FedSegNetFedAvgRecipe(...).export(DIR)`` one equal to ``jobs/fedavg``:
the same components, filters and arguments, the job args as top-level variables of each config and
``"{name}"`` references to them in the components' arguments, so ``fedsegnet job set`` and
``fedsegnet job args`` work on an export as on the job folders (tests check all of it).
``execute(env)`` runs them: :class:`FedSegNetSimEnv` and :class:`FedSegNetPocEnv` are FLARE's
``SimEnv`` and ``PocEnv`` with the FedSegNet site policy in place. From a shell, with the job args
as ``fedsegnet job set`` takes them (``--help`` lists them)::

    python -m fedsegnet.flare.recipe -w WS -n 2 --data-root DATA num_rounds=3 preset=tiny
    python -m fedsegnet.flare.recipe --job fedavg --env poc -w POC_WS --data-root DATA num_rounds=3
    python -m fedsegnet.flare.recipe up_ratio=0.05 --export --export-dir out   # FLARE's export: out/fedsegnet
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from nvflare.app_common.executors.learner_executor import LearnerExecutor
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.poc_env import PocEnv
from nvflare.recipe.prod_env import ProdEnv
from nvflare.recipe.sim_env import SimEnv
from nvflare.recipe.spec import DEFAULT_EXPORT_DIR, Recipe

from fedsegnet.config import JOB_ARGS, check_job, parse_job_values
from fedsegnet.errors import ConfigError, FedSegNetError, OutputError, RunError, UsageError
from fedsegnet.flare.compression import (
    GlobalModelDecoder,
    GlobalModelEncoder,
    GlobalModelSync,
    GlobalVersionReporter,
    MessageBytes,
    UpdateDecoder,
    UpdateEncoder,
)
from fedsegnet.flare.aggregator import AAMAggregator, SharedKeysWeightedAggregator
from fedsegnet.flare.constants import DATA_ROOT_ENV, SecAggTask
from fedsegnet.flare.ledger import (
    LedgerKeeper,
    LedgerPayloadRecorder,
    LedgerResultFilter,
    LedgerTaskFilter,
    SiteLedgerWitness,
)
from fedsegnet.flare.learner import SegLearner
from fedsegnet.flare.ops.policy import write_site_policy
from fedsegnet.flare.persistor import SegModelPersistor
from fedsegnet.flare.widgets import RoundRecorder
from fedsegnet.flare.secagg_executor import SecAggLearnerExecutor
from fedsegnet.flare.secagg_workflow import SecureScatterAndGather
from fedsegnet.flare.workflow import ResumableScatterAndGather
from fedsegnet.outputs import MARKER, claim_dir, read_marker, write_marker

ANALYTICS_EVENT = "analytix_log_stats"


class FedSegNetFedAvgRecipe(Recipe):
    """FedAvg over sites running :class:`SegLearner`, with model selection, cross-site evaluation and
    TensorBoard streaming: the job of ``jobs/fedavg`` as a Recipe.

    Every argument named like a job arg (:data:`fedsegnet.config.JOB_ARGS`) is checked as
    ``fedsegnet job set`` checks it (:func:`fedsegnet.config.check_job`) and becomes a job arg of
    the export (:attr:`job_args`): a top-level variable of the config of the side that uses it,
    referenced as ``"{name}"`` by the components, as in ``jobs/``.

    Args:
        name: job name. Defaults to ``"fedavg"``.
        num_rounds: federated rounds. Defaults to 5.
        min_clients: sites needed to start the job (and, with ``drop_stragglers``, to close a round).
            Defaults to 2.
        num_classes: classes including background. Defaults to None (the preset's: 3 for the
            generic presets; a dataset preset fixes it).
        in_channels: image channels. Defaults to None (the preset's: 1 for the generic presets).
        preset: preset name. Defaults to ``"cpu"``.
        local_steps: optimiser steps per round at each site. Defaults to 50.
        seed: job seed. Defaults to 0.
        network: override the preset's network. Defaults to None.
        patch_size: override the preset's crop size. Defaults to None.
        data_root: site data root (None: ``FEDSEGNET_DATA_ROOT`` at each site). Defaults to None.
        val_max_cases: validation cases per evaluation (0 = all). Defaults to 0.
        torch_threads: torch CPU threads per site (0 = default). Defaults to 0.
        num_workers: DataLoader workers per site. Defaults to None (the preset's).
        pseudo_threshold: pseudo-label confidence at box/tag sites. Defaults to 0.8.
        pseudo_ramp_rounds: rounds over which the pseudo-label loss weight ramps up. Defaults to 5.
        train_timeout: seconds the server waits for a site's update (0 = no limit). Defaults to 0.
        compression: add the compression filters of ``jobs/fedsegnet`` (both directions) and byte
            accounting. Defaults to False.
        up_ratio: share of each tensor a site sends (compression only). Defaults to 0.1.
        up_bits: bits per value a site sends. Defaults to 4.
        down_ratio: share of each tensor of the global model difference the server sends. Defaults to 0.1.
        down_bits: bits per value the server sends. Defaults to 4.
        compression_block: values per quantization scale. Defaults to 256.
        compression_scope: top-k ``"tensor"`` or ``"global"``. Defaults to ``"tensor"``.
        dense_bits: bits of small tensors sent dense. Defaults to 8.
        down_first_bits: bits of the first global model the sites receive (32 = exact). Defaults to 8.
        ignore_result_error: skip a site whose result is an error (a rejected update) instead of
            ending the job; None = FLARE's rule (end it when fewer than ``min_clients`` remain).
            Defaults to None.
        fedprox_mu: FedProx proximal weight at the sites (0 = off). Defaults to 0.0.
        aggregation: None for FLARE's ``InTimeAccumulateWeightedAggregator`` (FedAvg), or an
            :class:`~fedsegnet.flare.aggregator.AAMAggregator` method: ``"aam"``, ``"mean"``,
            ``"median"``, ``"trimmed_mean"``. Defaults to None.
        aam_temperature: AAM softmax temperature. Defaults to 0.2.
        aam_floor: lowest AAM weight of an accepted site. Defaults to 0.02.
        aam_cap: highest AAM weight. Defaults to 0.6.
        aam_peer_cases_ratio: a site's case count counts at most this many times the lower median
            of the others' (0 = no peer bound). Defaults to 2.0.
        drop_stragglers: False: each round waits for every site of the job (up to
            ``train_timeout``); True: a round closes ``wait_after_min_clients`` seconds after
            ``min_clients`` updates are in, and a later update is lost. Defaults to False.
        wait_after_min_clients: with ``drop_stragglers``: seconds a round waits for the other sites
            once ``min_clients`` updates are in. Defaults to 10.
        cse_submit_timeout: seconds cross-site evaluation waits for a site's local model. Defaults to 600.
        cse_validation_timeout: seconds cross-site evaluation waits for a site's results. Defaults to 6000.
        resume_from: id of an interrupted job to continue (see :mod:`fedsegnet.flare.resume`); empty
            for a fresh start. Defaults to ``""``.
        personalization, personal_keys, ditto_lambda, personal_steps, boundary_weight, boundary_band,
            boundary_perturbation: the sites' personalisation (:class:`fedsegnet.config.PersonalConfig`;
            defaults ``"none"``, ``()``, 0.1, 0, 0.0, 2, 0.1). ``"dca"`` needs ``network="dca_unetr"``.
        dp, dp_noise, dp_target_epsilon, dp_delta, dp_clip, dp_budget: the sites' differential
            privacy (:class:`fedsegnet.privacy.DPSettings`; defaults ``"none"``, None, None, None,
            1.0, 0.0; see ``docs/privacy.md``).
        secure_aggregation: None for ``jobs/fedavg``'s workflow and executor (no such job arg); True or
            False for ``jobs/fedsegnet``'s, which switch on it
            (:class:`~fedsegnet.flare.secagg_workflow.SecureScatterAndGather`,
            :class:`~fedsegnet.flare.secagg_executor.SecAggLearnerExecutor`). Defaults to None.
        secagg_threshold: the fewest sites a secure round's sum needs (0 = a majority). Defaults to 0.

    Raises:
        ConfigError: a bad value, or values that do not go together (``aam_floor`` > ``aam_cap``, a
            dataset preset with other ``num_classes``), named before anything is built.
    """

    def __init__(
        self,
        name: str = "fedavg",
        num_rounds: int = 5,
        min_clients: int = 2,
        num_classes: int | None = None,
        in_channels: int | None = None,
        preset: str = "cpu",
        local_steps: int = 50,
        seed: int = 0,
        network: str | None = None,
        patch_size=None,
        data_root: str | None = None,
        val_max_cases: int = 0,
        torch_threads: int = 0,
        num_workers: int | None = None,
        pseudo_threshold: float = 0.8,
        pseudo_ramp_rounds: int = 5,
        train_timeout: int = 0,
        compression: bool = False,
        up_ratio: float = 0.1,
        up_bits: int = 4,
        down_ratio: float = 0.1,
        down_bits: int = 4,
        compression_block: int = 256,
        compression_scope: str = "tensor",
        dense_bits: int = 8,
        down_first_bits: int = 8,
        ignore_result_error: bool | None = None,
        fedprox_mu: float = 0.0,
        aggregation: str | None = None,
        aam_temperature: float = 0.2,
        aam_floor: float = 0.02,
        aam_cap: float = 0.6,
        aam_peer_cases_ratio: float = 2.0,
        drop_stragglers: bool = False,
        wait_after_min_clients: int = 10,
        cse_submit_timeout: int = 600,
        cse_validation_timeout: int = 6000,
        resume_from: str = "",
        personalization: str = "none",
        personal_keys=(),
        ditto_lambda: float = 0.1,
        personal_steps: int = 0,
        boundary_weight: float = 0.0,
        boundary_band: int = 2,
        boundary_perturbation: float = 0.1,
        dp: str = "none",
        dp_noise: float | None = None,
        dp_target_epsilon: float | None = None,
        dp_delta: float | None = None,
        dp_clip: float = 1.0,
        dp_budget: float = 0.0,
        secure_aggregation: bool | None = None,
        secagg_threshold: int = 0,
    ):
        given = {k: v for k, v in dict(locals()).items() if k in JOB_ARGS}
        if aggregation is None:
            del given["aggregation"]  # FedAvg: FLARE's weighted aggregator, no aggregation job arg
        if secure_aggregation is None:  # jobs/fedavg: no secure-aggregation job args
            del given["secure_aggregation"], given["secagg_threshold"]
        self._values = check_job(given)  # every value and the rules that join several, before anything is built
        self._bound = {"server": {}, "client": {}}
        server, client = self._server, self._client
        job = FedJob(name=name, min_clients=min_clients)
        job.set_app_packages(["fedsegnet"])  # sites run the installed package; nothing is copied into the job
        rounds = dict(
            min_clients=min_clients,
            num_rounds=num_rounds,
            start_round=0,
            wait_time_after_min_received=wait_after_min_clients,
            aggregator_id="aggregator",
            persistor_id="persistor",
            shareable_generator_id="shareable_generator",
            train_task_name="train",
            train_timeout=train_timeout,
            ignore_result_error=ignore_result_error,
            drop_stragglers=drop_stragglers,
        )
        # jobs/fedsegnet: one workflow and one executor for both modes, switched by the job arg
        secagg = () if secure_aggregation is None else ("secure_aggregation", "secagg_threshold")
        peer = {"peer_cases_ratio": "aam_peer_cases_ratio", "support_ratio": "up_ratio", "value_bits": "up_bits",
                "block": "compression_block", "scope": "compression_scope"} if secagg else {}  # fmt: skip
        if secagg:
            sag = SecureScatterAndGather(secure_aggregation=secure_aggregation, secagg_threshold=secagg_threshold,
                                         peer_cases_ratio=aam_peer_cases_ratio, support_ratio=up_ratio, value_bits=up_bits,
                                         block=compression_block, scope=compression_scope, **rounds)  # fmt: skip
        else:
            sag = ResumableScatterAndGather(**rounds)
        # None (FLARE's rule) stays a literal, as in jobs/fedavg; a value is the job arg of jobs/fedsegnet
        rule = ("ignore_result_error",) if ignore_result_error is not None else ()
        server(sag, "min_clients", "num_rounds", "train_timeout", "drop_stragglers", *rule, *secagg,
               wait_time_after_min_received="wait_after_min_clients", **peer)  # fmt: skip
        job.to_server(sag, id="scatter_and_gather")
        cse = CrossSiteModelEval(
            model_locator_id="model_locator",
            submit_model_timeout=cse_submit_timeout,
            validation_timeout=cse_validation_timeout,
            cleanup_models=False,
        )
        server(cse, submit_model_timeout="cse_submit_timeout", validation_timeout="cse_validation_timeout")
        job.to_server(cse, id="cross_site_model_eval")
        model_args = ("num_classes", "in_channels", "preset", "network", "patch_size", "seed")
        persistor = SegModelPersistor(
            num_classes=num_classes,
            in_channels=in_channels,
            preset=preset,
            network=network,
            patch_size=patch_size,
            seed=seed,
            resume_from=resume_from,
        )
        job.to_server(server(persistor, *model_args, "resume_from"), id="persistor")
        job.to_server(FullModelShareableGenerator(), id="shareable_generator")
        # the keys that stay at the sites: the server computes them from the same job args as the sites
        shared = dict(personalization=personalization, personal_keys=list(personal_keys))
        if aggregation is None:
            aggregator = SharedKeysWeightedAggregator(expected_data_kind="WEIGHT_DIFF", **shared)
            job.to_server(server(aggregator, *shared), id="aggregator")
        else:
            aggregator = AAMAggregator(
                method=aggregation, temperature=aam_temperature, floor=aam_floor, cap=aam_cap,
                peer_cases_ratio=aam_peer_cases_ratio, **shared,
            )  # fmt: skip
            server(aggregator, *shared, method="aggregation", temperature="aam_temperature", floor="aam_floor",
                   cap="aam_cap", peer_cases_ratio="aam_peer_cases_ratio")  # fmt: skip
            job.to_server(aggregator, id="aggregator")
        job.to_server(IntimeModelSelector(key_metric="val_dice"), id="model_selector")
        job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
        job.to_server(ValidationJsonGenerator(), id="json_generator")
        job.to_server(TBAnalyticsReceiver(tb_folder="tb_events", events=[f"fed.{ANALYTICS_EVENT}"]), id="tb_receiver")
        job.to_server(RoundRecorder(tb_folder="tb_events"), id="round_recorder")

        if secagg:
            executor = client(SecAggLearnerExecutor(learner_id="learner", secure_aggregation=secure_aggregation), "secure_aggregation")
            job.to_clients(executor, tasks=["train", "submit_model", "validate", *SecAggTask.ALL], id="executor")
        else:
            job.to_clients(LearnerExecutor(learner_id="learner"), tasks=["train", "submit_model", "validate"], id="executor")
        site_args = (
            "data_root", *model_args, "local_steps", "val_max_cases", "torch_threads", "num_workers", "pseudo_threshold",
            "pseudo_ramp_rounds", "fedprox_mu", "personalization", "personal_keys", "ditto_lambda", "personal_steps",
            "boundary_weight", "boundary_band", "boundary_perturbation", "resume_from", "num_rounds", "dp", "dp_noise",
            "dp_target_epsilon", "dp_delta", "dp_clip", "dp_budget",
        )  # fmt: skip
        learner = SegLearner(
            data_root=data_root,
            num_classes=num_classes,
            in_channels=in_channels,
            preset=preset,
            network=network,
            patch_size=patch_size,
            local_steps=local_steps,
            seed=seed,
            val_max_cases=val_max_cases,
            torch_threads=torch_threads,
            num_workers=num_workers,
            pseudo_threshold=pseudo_threshold,
            pseudo_ramp_rounds=pseudo_ramp_rounds,
            analytic_sender_id="analytic_sender",
            fedprox_mu=fedprox_mu,
            personalization=personalization,
            personal_keys=list(personal_keys),
            ditto_lambda=ditto_lambda,
            personal_steps=personal_steps,
            boundary_weight=boundary_weight,
            boundary_band=boundary_band,
            boundary_perturbation=boundary_perturbation,
            resume_from=resume_from,
            num_rounds=num_rounds,
            dp=dp,
            dp_noise=dp_noise,
            dp_target_epsilon=dp_target_epsilon,
            dp_delta=dp_delta,
            dp_clip=dp_clip,
            dp_budget=dp_budget,
        )
        job.to_clients(client(learner, *site_args), id="learner")
        job.to_clients(TBWriter(event_type=ANALYTICS_EVENT), id="analytic_sender")
        job.to_clients(
            ConvertToFedEvent(events_to_convert=[ANALYTICS_EVENT], fed_event_prefix="fed."), id="event_to_fed"
        )
        # the ledger (fedsegnet.flare.ledger): payload hashes as received first, the head's bundle last
        job.to_server(LedgerKeeper(), id="ledger")
        job.to_server(LedgerResultFilter(), tasks=["train"], filter_type=FilterType.TASK_RESULT)
        job.to_clients(SiteLedgerWitness(), id="ledger_witness")
        if compression:
            codec = dict(block=compression_block, scope=compression_scope, dense_bits=dense_bits, seed=seed)
            codec_args = dict(block="compression_block", scope="compression_scope", dense_bits="dense_bits", seed="seed")
            sync = GlobalModelSync(ratio=down_ratio, bits=down_bits, first_bits=down_first_bits, **codec)
            server(sync, ratio="down_ratio", bits="down_bits", first_bits="down_first_bits", **codec_args)
            job.to_server(sync, id="global_model_sync")
            # the ledger's bundle before the bytes are counted: what a site is sent includes it
            for f in (GlobalModelEncoder(sync_id="global_model_sync"), LedgerTaskFilter(), MessageBytes(direction="down")):
                job.to_server(f, tasks=["train"], filter_type=FilterType.TASK_DATA)
            # AAMAggregator keeps top-k records as received (decoded when read); FLARE's weighted aggregator needs dense arrays
            for f in (MessageBytes(direction="up"), UpdateDecoder(sparse="packed" if aggregation is not None else False)):
                job.to_server(f, tasks=["train"], filter_type=FilterType.TASK_RESULT)
            # under secure aggregation the masked-input step brings the global model
            down_tasks = ["train", SecAggTask.MASKED] if secagg else ["train"]
            job.to_clients(GlobalModelDecoder(), tasks=down_tasks, filter_type=FilterType.TASK_DATA)
            encoder = UpdateEncoder(ratio=up_ratio, bits=up_bits, resume_from=resume_from, **codec)
            client(encoder, "resume_from", ratio="up_ratio", bits="up_bits", **codec_args)
            job.to_clients(encoder, tasks=["train"], filter_type=FilterType.TASK_RESULT)
        else:
            job.to_server(LedgerTaskFilter(), tasks=["train"], filter_type=FilterType.TASK_DATA)
        job.to_clients(LedgerPayloadRecorder(), tasks=["train"], filter_type=FilterType.TASK_RESULT)
        if secagg:
            # FLARE's filter chains must not share a task: the masked-input step (the global model, as
            # a difference where the site holds the last one, with the ledger's bundle; the site's
            # masked input back, hashed for the ledger) and the three key steps each get their own;
            # every step's messages are counted both ways
            masked, keys = [SecAggTask.MASKED], [t for t in SecAggTask.ALL if t != SecAggTask.MASKED]
            down = (GlobalModelEncoder(sync_id="global_model_sync"),) if compression else ()
            for f in (*down, LedgerTaskFilter(), MessageBytes(direction="down")):
                job.to_server(f, tasks=masked, filter_type=FilterType.TASK_DATA)
            for f in (LedgerResultFilter(), MessageBytes(direction="up")):
                job.to_server(f, tasks=masked, filter_type=FilterType.TASK_RESULT)
            job.to_server(MessageBytes(direction="down"), tasks=keys, filter_type=FilterType.TASK_DATA)
            job.to_server(MessageBytes(direction="up"), tasks=keys, filter_type=FilterType.TASK_RESULT)
            for f in ((GlobalVersionReporter(),) if compression else ()) + (LedgerPayloadRecorder(),):
                job.to_clients(f, tasks=masked, filter_type=FilterType.TASK_RESULT)
        super().__init__(job)
        # the job args, at the top of each config as in jobs/: FLARE puts them in place of the "{name}" references
        self.add_server_config(dict(self._bound["server"]))
        self.add_client_config(dict(self._bound["client"]))

    @property
    def job_args(self) -> dict:
        """The job's args, ``{name: value}`` over both configs (what ``fedsegnet job args`` lists of the export)."""
        return {**self._bound["server"], **self._bound["client"]}

    def _server(self, component, *same, **renamed):
        return self._take_job_args(component, "server", same, renamed)

    def _client(self, component, *same, **renamed):
        return self._take_job_args(component, "client", same, renamed)

    def _take_job_args(self, component, side: str, same, renamed):
        """Make the component's arguments ``same`` (the job arg of the same name) and ``renamed``
        (``{argument: job arg}``) references ``"{job arg}"`` to top-level variables of ``side``'s
        config, as the job folders have them.

        The component was built (and checked its values) with the values themselves; FLARE writes a
        component's arguments from its attributes of the same name (or with a leading ``_``), so
        those attributes become the references: the job runs from its exported configs, never from
        these objects. Returns ``component``.
        """
        attrs = vars(component)
        for param, arg in {**{n: n for n in same}, **renamed}.items():
            key = param if param in attrs else f"_{param}"
            if key not in attrs:  # FLARE could not write this argument at all
                raise TypeError(f"{type(component).__name__} keeps no attribute {param!r} or '_{param}' for job arg {arg!r}")
            attrs[key] = "{" + arg + "}"
            self._bound[side][arg] = self._values[arg]
        return component


class FedSegNetRecipe(FedSegNetFedAvgRecipe):
    """FedSegNet's job (``jobs/fedsegnet``): AAM aggregation of compressed updates (both ways), a
    rejected update skipped rather than ending the job. Takes the arguments of
    :class:`FedSegNetFedAvgRecipe`; defaults differ in ``name="fedsegnet"``, ``compression=True``,
    ``ignore_result_error=True``, ``aggregation="aam"``, ``secure_aggregation=False``.
    """

    def __init__(
        self,
        name: str = "fedsegnet",
        compression: bool = True,
        ignore_result_error: bool | None = True,
        aggregation: str | None = "aam",
        secure_aggregation: bool = False,
        **kwargs,
    ):
        super().__init__(
            name=name, compression=compression, ignore_result_error=ignore_result_error, aggregation=aggregation,
            secure_aggregation=secure_aggregation, **kwargs,
        )  # fmt: skip


class FedSegNetSimEnv(SimEnv):
    """FLARE's ``SimEnv`` whose simulated sites admit FedSegNet's components.

    Before the simulator starts in ``<workspace_root>/<job name>``, that workspace is claimed as
    ``fedsegnet job simulate`` claims its own (the simulator empties everything in it but
    ``local/`` and ``startup/``, so a folder holding anything else is refused; ``overwrite`` replaces
    one an earlier run of this environment left) and the FedSegNet site policy goes into its
    ``local/`` (:func:`fedsegnet.flare.ops.policy.write_site_policy`; FLARE's own default list lacks
    the FedSegNet classes).

    Args:
        data_root: given to the sites as ``FEDSEGNET_DATA_ROOT``. Defaults to None (inherited).
        overwrite: replace a workspace an earlier run of this environment left. Defaults to False.
        **kwargs: :class:`nvflare.recipe.sim_env.SimEnv`'s (``num_clients``, ``num_threads``,
            ``workspace_root``, ...).
    """

    def __init__(self, *, data_root: str | None = None, overwrite: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_root = data_root
        self.overwrite = bool(overwrite)

    def deploy(self, job: FedJob) -> str:
        workspace = Path(self.workspace_root) / job.name
        claim_dir(workspace, "recipe sim", overwrite=self.overwrite, flag="--workspace", keep=("local", "startup"), marker_dir="local")
        write_site_policy(workspace / "local", create=True)
        with _site_data_root(self.data_root):
            return super().deploy(job)


class FedSegNetPocEnv(PocEnv):
    """FLARE's ``PocEnv`` whose startup kits admit FedSegNet's components.

    ``PocEnv`` provisions fresh kits for every job, with FLARE's default class allow-list, which
    lacks the FedSegNet classes (the job would fail with ``ComponentNotAuthorized``). This one
    provisions the project of ``fedsegnet poc prepare`` (:func:`fedsegnet.flare.ops.poc.poc_project`:
    server ``localhost``, sites ``site-1..site-N``, project admin ``admin@consortium.org``, the given
    ports), writes the FedSegNet site policy into every kit's ``local/`` before anything starts,
    starts the server and the sites as ``PocEnv`` does, waits until every site is connected and
    submits the job as the project admin.

    The workspace holds only what this environment provisions: a folder that does not exist or is
    empty is taken; one an earlier ``FedSegNetPocEnv`` provisioned is used again (provisioning adds
    a new ``<workspace>/fedsegnet/prod_NN``; the kits and results of earlier runs stay); anything
    else is refused, as is a workspace whose POC system still runs (``PocEnv`` would stop it and
    delete the workspace).

    :meth:`stop` shuts the system down through the admin API (``PocEnv.stop``), then ends, by the
    pids the kits recorded (``daemon_pid.fl``, ``pid.fl``), any participant that is still running.
    ``Run.get_result()`` calls it with ``clean_up=True`` by default, which deletes the workspace with
    the downloaded result in it (FLARE's rule): pass ``clean_up=False`` to keep them.

    Args:
        num_clients: number of sites ``site-1..site-N``. Defaults to 2.
        workspace: the POC workspace. Defaults to None (FLARE's: ``NVFLARE_POC_WORKSPACE``, else
            ``nvflare config``'s, else ``/tmp/nvflare/poc``).
        data_root: given to the sites as ``FEDSEGNET_DATA_ROOT``. Defaults to None (inherited).
        fed_learn_port: the server's port for sites. Defaults to 8002.
        admin_port: the server's port for the admin API. Defaults to 8003.
        ready_timeout: seconds to wait for the server and every site after starting them. Defaults to 180.
        **kwargs: :class:`nvflare.recipe.poc_env.PocEnv`'s ``gpu_ids``, ``study``, ``extra``.

    Raises:
        ConfigError: from the constructor, for a bad number of sites or equal ports.
    """

    def __init__(
        self, *, num_clients: int = 2, workspace: str | None = None, data_root: str | None = None,
        fed_learn_port: int = 8002, admin_port: int = 8003, ready_timeout: float = 180.0, **kwargs,
    ):  # fmt: skip
        from fedsegnet.flare.ops.poc import ADMIN, poc_project

        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigError("num_clients", num_clients, "must be an int >= 1")
        super().__init__(num_clients=num_clients, username=ADMIN, **kwargs)
        self.sites = [f"site-{i}" for i in range(1, num_clients + 1)]
        self.project = poc_project(self.sites, fed_learn_port, admin_port)  # validates the ports
        if workspace is not None:
            self.poc_workspace = os.path.abspath(workspace)
        self.data_root = data_root
        self.ready_timeout = float(ready_timeout)

    def deploy(self, job: FedJob) -> str:
        import yaml
        from nvflare.tool.poc.poc_commands import _start_poc, get_prod_dir, prepare_poc_provision

        from fedsegnet.flare.ops.poc import PROJECT_NAME

        self._claim_workspace()
        if self._check_poc_running():
            raise RunError(
                f"POC workspace {self.poc_workspace}: its POC system still runs; stop it first "
                f"(`NVFLARE_POC_WORKSPACE={self.poc_workspace} nvflare poc stop`)"
            )
        with tempfile.TemporaryDirectory(prefix="fedsegnet-poc-") as tmp:
            project_file = Path(tmp) / "project.yml"
            project_file.write_text(yaml.safe_dump(self.project, sort_keys=False))
            prepare_poc_provision(
                clients=[], number_of_clients=self.num_clients, workspace=self.poc_workspace, docker_image=None,
                project_conf_path=str(project_file),
            )  # fmt: skip
        self.prod_dir = Path(get_prod_dir(self.poc_workspace, PROJECT_NAME))
        for kit in ("localhost", *self.sites):
            write_site_policy(self.prod_dir / kit / "local", create=False)
        self._session_manager = None  # a new prod_NN: a new admin kit
        with _site_data_root(self.data_root):
            _start_poc(poc_workspace=self.poc_workspace, gpu_ids=self.gpu_ids, excluded=[self.username], services_list=[])
        self._wait_ready()
        return self._get_session_manager().submit_job(job)

    def _claim_workspace(self) -> None:
        ws = Path(self.poc_workspace)
        if (ws.exists() or ws.is_symlink()) and not ws.is_dir():
            raise OutputError(f"POC workspace {ws}: exists and is not a folder; it is left alone")
        if ws.is_dir() and any(ws.iterdir()):
            marker = read_marker(ws)
            if marker is None or marker.get("command") != "recipe poc":
                raise OutputError(
                    f"POC workspace {ws}: exists and was not provisioned by a FedSegNet Recipe (no {MARKER}); "
                    "it is left alone: choose another -w/--workspace"
                )
            return
        ws.mkdir(parents=True, exist_ok=True)
        write_marker(ws, "recipe poc")

    def _wait_ready(self) -> None:
        """Until the admin API answers and every site is connected, or ``ready_timeout`` passed."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        deadline = time.monotonic() + self.ready_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # FLARE prints a line per session
                    session = new_secure_session(self.username, self._get_admin_startup_kit_path(), timeout=10)
                try:
                    connected = sorted(c.name for c in session.get_connected_client_list())
                finally:
                    session.close()
                if set(self.sites) <= set(connected):
                    return
                last = f"connected sites: {connected}"
            except Exception as e:  # the server is still starting
                last = f"admin API: {e}"
            time.sleep(2)
        self.stop()
        raise RunError(f"POC system in {self.prod_dir} not ready within {self.ready_timeout:.0f} s ({last}); see each kit's log.txt")

    def stop(self, clean_up: bool = False) -> None:
        """Shut the POC system down (``PocEnv.stop``); end, by their recorded pids, the participants
        that still run; with ``clean_up`` delete the workspace (see the class)."""
        super().stop(clean_up=False)
        prod_dir = getattr(self, "prod_dir", None)
        if prod_dir is not None:
            for kit in ("localhost", *self.sites):
                for pid_file in ("daemon_pid.fl", "pid.fl"):  # the restart loop first, then the process it runs
                    _end_kit_process(prod_dir / kit, pid_file)
        if clean_up:
            super().stop(clean_up=True)


def _end_kit_process(kit: Path, pid_file: str, grace: float = 10.0) -> None:
    """End the process whose pid ``<kit>/<pid_file>`` records, when it still runs this kit."""
    try:
        pid = int((kit / pid_file).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return  # no pid file, or the process is gone
    if str(kit) not in cmdline:
        return  # the pid was reused by another process
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def _site_data_root(data_root):
    """``FEDSEGNET_DATA_ROOT`` set to ``data_root`` in this process's environment (which the
    simulator and the POC participants inherit) for the ``with`` block; nothing when None."""
    if data_root is None:
        yield
        return
    before = os.environ.get(DATA_ROOT_ENV)
    os.environ[DATA_ROOT_ENV] = os.path.abspath(data_root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DATA_ROOT_ENV, None)
        else:
            os.environ[DATA_ROOT_ENV] = before


# ----------------------------------------------------------------------------------------- command line
RECIPES = {"fedsegnet": FedSegNetRecipe, "fedavg": FedSegNetFedAvgRecipe}
_OLD_FLAGS = {"rounds": "num_rounds"}  # the flags of the Recipe's first command line that became job args by other names


def _job_args_help() -> str:
    lines = ["job args (KEY=VALUE, as `fedsegnet job set` takes them; a value is read as JSON when it parses):"]
    for arg in JOB_ARGS.values():
        lines.append(f"  {arg.name}={json.dumps(arg.default)}  ({arg.describe()}) {arg.help}")
    lines.append("`fedsegnet job args jobs/<job>` lists the args of one job; a value that is not one of them is refused.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fedsegnet.flare.recipe", description="Run or export the FedSegNet jobs as FLARE Recipes (jobs/fedsegnet, jobs/fedavg).",
        epilog=_job_args_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("values", nargs="*", metavar="KEY=VALUE", help="job args (listed below)")
    p.add_argument("--job", choices=sorted(RECIPES), default="fedsegnet", help="which job (default: fedsegnet, as the demo)")
    p.add_argument("--name", default=None, help="job name (default: the job's)")
    p.add_argument("--env", choices=("sim", "poc", "prod"), default="sim", help="where to run (default: sim)")
    p.add_argument("-w", "--workspace", default=None,
                   help="sim: the simulator runs in WORKSPACE/<job name> (default /tmp/fedsegnet/sim); "
                        "poc: the POC workspace (default /tmp/fedsegnet/poc)")  # fmt: skip
    p.add_argument("-n", "--n-clients", "--clients", dest="n_clients", type=int, default=2,
                   help="number of sites site-1..site-N (sim, poc; default 2)")  # fmt: skip
    p.add_argument("-t", "--threads", type=int, default=None, help="sites trained in parallel (sim; default: all)")
    p.add_argument("--data-root", help="folder with one folder per site, given to the sites as FEDSEGNET_DATA_ROOT (sim, poc)")
    p.add_argument("--startup-kit", help="the admin's startup kit folder (prod)")
    p.add_argument("--fed-learn-port", type=int, default=8002, help="the POC server's port for sites (poc)")
    p.add_argument("--admin-port", type=int, default=8003, help="the POC server's port for the admin API (poc)")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait for the job (poc, prod; 0 = no limit)")
    p.add_argument("--overwrite", action="store_true", help="replace a simulator workspace an earlier run of the Recipe left (sim)")
    # FLARE's recipe export: FLARE takes these two from the command line itself when the module is imported
    # (Recipe.execute exports instead of running); they reach this parser only through main(argv)
    p.add_argument("--export", action="store_true", help="write the job folder instead of running it (FLARE's recipe export)")
    p.add_argument("--export-dir", default=DEFAULT_EXPORT_DIR, help=f"where --export writes the job folder <DIR>/<job name> (default {DEFAULT_EXPORT_DIR})")
    return p


def _parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args, unknown = parser.parse_known_intermixed_args(argv)
    for word in unknown:
        name = word.lstrip("-").partition("=")[0].replace("-", "_")
        if word.startswith("--") and (name in JOB_ARGS or _OLD_FLAGS.get(name)):
            parser.error(f"job args are KEY=VALUE words, as `fedsegnet job set` takes them: {_OLD_FLAGS.get(name) or name}=... (not {word})")
        if word.startswith("--write-job"):
            parser.error("--write-job is gone: FLARE's --export --export-dir DIR writes the job folder")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


_values = parse_job_values  # the same KEY=VALUE reading as ``fedsegnet job set``


def build_recipe(job: str = "fedsegnet", name: str | None = None, **values) -> FedSegNetFedAvgRecipe:
    """The Recipe of ``jobs/<job>`` with job args ``values``, refusing any that is not an arg of that job.

    Args:
        job: ``"fedsegnet"`` or ``"fedavg"``. Defaults to ``"fedsegnet"``.
        name: job name. Defaults to None (``job``).
        **values: job args, e.g. ``num_rounds=3, preset="tiny"``.

    Raises:
        ConfigError: an unknown job, a name that is no job arg of ``job`` or a value its declaration
            refuses (named, with the allowed values).
    """
    if job not in RECIPES:
        raise ConfigError("job", job, "unknown job", options=sorted(RECIPES))
    for key, value in values.items():
        if key not in JOB_ARGS:
            raise ConfigError(key, value, "not a FedSegNet job arg", options=sorted(JOB_ARGS))
    recipe = RECIPES[job](name=name or job, **values)
    known = recipe.job_args
    for key, value in values.items():
        # ignore_result_error=null is FLARE's rule, a literal in the job rather than a job arg
        if key not in known and not (key == "ignore_result_error" and value is None):
            raise ConfigError(key, value, f"not a job arg of job {job}", options=sorted(known))
    return recipe


def main(argv=None) -> int:
    """``python -m fedsegnet.flare.recipe``: build a Recipe from job args, then run it in an
    environment or export it (FLARE's ``--export``). Returns the exit code."""
    parser = _parser()
    args = _parse(parser, argv)
    try:
        recipe = build_recipe(args.job, args.name, **_values(args.values))
        env = _env(args, recipe)
        if args.export:  # only through main(argv): from a shell FLARE takes the flags itself, in execute()
            recipe.export(args.export_dir, env=env)
            print(f"Job exported to: {args.export_dir}")
            return 0
        try:
            run = recipe.execute(env)  # FLARE: with --export on the command line, exports and exits 0
            result = run.get_result(timeout=args.timeout, clean_up=False)  # keep the workspace and the result
            status = run.get_status() if args.env != "sim" else "FINISHED:COMPLETED"  # SimEnv raised if it failed
        finally:  # also on a failure or Ctrl-C: a POC system is shut down, its processes ended by pid
            env.stop(clean_up=False)
    except FedSegNetError as e:  # a bad value or a refused folder, named, before anything is written or started
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # FLARE: the simulator failed, a submission failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"job {run.get_job_id()}: {status}; result: {result}")
    return 0 if result and status == "FINISHED:COMPLETED" else 1


def _env(args, recipe: FedSegNetFedAvgRecipe):
    if args.env in ("sim", "poc"):
        if args.n_clients < 1:
            raise ConfigError("-n/--n-clients", args.n_clients, "must be >= 1")
        if recipe.job_args["min_clients"] > args.n_clients:
            raise ConfigError(
                "min_clients", recipe.job_args["min_clients"],
                f"more than the {args.n_clients} site(s) of -n/--n-clients: the job would never start",
            )  # fmt: skip
    if args.env == "sim":
        return FedSegNetSimEnv(
            num_clients=args.n_clients, num_threads=args.threads, workspace_root=os.path.abspath(args.workspace or "/tmp/fedsegnet/sim"),
            data_root=args.data_root, overwrite=args.overwrite,
        )  # fmt: skip
    if args.env == "poc":
        return FedSegNetPocEnv(
            num_clients=args.n_clients, workspace=args.workspace or "/tmp/fedsegnet/poc", data_root=args.data_root,
            fed_learn_port=args.fed_learn_port, admin_port=args.admin_port,
        )  # fmt: skip
    if not args.startup_kit:
        raise UsageError("--startup-kit is required with --env prod")
    if args.data_root:
        raise UsageError(
            "--data-root: the sites of a deployment read their own FEDSEGNET_DATA_ROOT; to name a folder in the job, give data_root=DIR"
        )
    return ProdEnv(startup_kit_location=args.startup_kit)


if __name__ == "__main__":
    sys.exit(main())
