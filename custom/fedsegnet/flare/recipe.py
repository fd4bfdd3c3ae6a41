"""The jobs as FLARE Recipes (``SimEnv``, ``PocEnv``, ``ProdEnv``), built from the same components as
``jobs/fedavg`` and ``jobs/fedsegnet``.

``FedSegNetFedAvgRecipe(...).export(DIR)`` writes the same job folder as ``jobs/fedavg`` and
``FedSegNetRecipe(...).export(DIR)`` the same as ``jobs/fedsegnet`` (FedAvg plus the compression
filters in both directions; tests check that every component, filter, path and argument agrees);
``execute(env)`` runs them. From a shell::

    python -m fedsegnet.flare.recipe --env sim --data-root DATA --workspace WS --rounds 3 --preset tiny
    python -m fedsegnet.flare.recipe --job fedsegnet --up-ratio 0.01 --up-bits 8 ...
"""

from __future__ import annotations

import argparse
import os
import sys

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
from nvflare.recipe.spec import Recipe

from fedsegnet.config import JOB_ARGS, check_job_args
from fedsegnet.errors import ConfigError
from fedsegnet.flare.compression import (
    GlobalModelDecoder,
    GlobalModelEncoder,
    GlobalModelSync,
    MessageBytes,
    UpdateDecoder,
    UpdateEncoder,
)
from fedsegnet.flare.aggregator import AAMAggregator, SharedKeysWeightedAggregator
from fedsegnet.flare.ledger import (
    LedgerKeeper,
    LedgerPayloadRecorder,
    LedgerResultFilter,
    LedgerTaskFilter,
    SiteLedgerWitness,
)
from fedsegnet.flare.learner import SegLearner
from fedsegnet.flare.persistor import SegModelPersistor
from fedsegnet.flare.widgets import RoundRecorder
from fedsegnet.flare.workflow import ResumableScatterAndGather

ANALYTICS_EVENT = "analytix_log_stats"


class FedSegNetFedAvgRecipe(Recipe):
    """FedAvg over sites running :class:`SegLearner`, with model selection, cross-site evaluation and
    TensorBoard streaming: the job of ``jobs/fedavg`` as a Recipe.

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
        aam_temperature: AAM softmax temperature. Defaults to 0.05.
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
        aam_temperature: float = 0.05,
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
    ):
        given = dict(locals())
        check_job_args({k: v for k, v in given.items() if k in JOB_ARGS and not (k == "aggregation" and v is None)})
        job = FedJob(name=name, min_clients=min_clients)
        job.set_app_packages(["fedsegnet"])  # sites run the installed package; nothing is copied into the job
        job.to_server(
            ResumableScatterAndGather(
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
            ),
            id="scatter_and_gather",
        )
        job.to_server(
            CrossSiteModelEval(
                model_locator_id="model_locator",
                submit_model_timeout=cse_submit_timeout,
                validation_timeout=cse_validation_timeout,
                cleanup_models=False,
            ),
            id="cross_site_model_eval",
        )
        job.to_server(
            SegModelPersistor(
                num_classes=num_classes,
                in_channels=in_channels,
                preset=preset,
                network=network,
                patch_size=patch_size,
                seed=seed,
                resume_from=resume_from,
            ),
            id="persistor",
        )
        job.to_server(FullModelShareableGenerator(), id="shareable_generator")
        # the keys that stay at the sites: the server computes them from the same job args as the sites
        shared = dict(personalization=personalization, personal_keys=list(personal_keys))
        if aggregation is None:
            job.to_server(SharedKeysWeightedAggregator(expected_data_kind="WEIGHT_DIFF", **shared), id="aggregator")
        else:
            job.to_server(
                AAMAggregator(
                    method=aggregation, temperature=aam_temperature, floor=aam_floor, cap=aam_cap,
                    peer_cases_ratio=aam_peer_cases_ratio, **shared,
                ),  # fmt: skip
                id="aggregator",
            )
        job.to_server(IntimeModelSelector(key_metric="val_dice"), id="model_selector")
        job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
        job.to_server(ValidationJsonGenerator(), id="json_generator")
        job.to_server(TBAnalyticsReceiver(tb_folder="tb_events", events=[f"fed.{ANALYTICS_EVENT}"]), id="tb_receiver")
        job.to_server(RoundRecorder(tb_folder="tb_events"), id="round_recorder")

        job.to_clients(LearnerExecutor(learner_id="learner"), tasks=["train", "submit_model", "validate"], id="executor")
        job.to_clients(
            SegLearner(
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
            ),
            id="learner",
        )
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
            job.to_server(GlobalModelSync(ratio=down_ratio, bits=down_bits, first_bits=down_first_bits, **codec), id="global_model_sync")
            # the ledger's bundle before the bytes are counted: what a site is sent includes it
            for f in (GlobalModelEncoder(sync_id="global_model_sync"), LedgerTaskFilter(), MessageBytes(direction="down")):
                job.to_server(f, tasks=["train"], filter_type=FilterType.TASK_DATA)
            # AAMAggregator keeps top-k records as received (decoded when read); FLARE's weighted aggregator needs dense arrays
            for f in (MessageBytes(direction="up"), UpdateDecoder(sparse="packed" if aggregation is not None else False)):
                job.to_server(f, tasks=["train"], filter_type=FilterType.TASK_RESULT)
            job.to_clients(GlobalModelDecoder(), tasks=["train"], filter_type=FilterType.TASK_DATA)
            job.to_clients(
                UpdateEncoder(ratio=up_ratio, bits=up_bits, resume_from=resume_from, **codec), tasks=["train"], filter_type=FilterType.TASK_RESULT
            )
        else:
            job.to_server(LedgerTaskFilter(), tasks=["train"], filter_type=FilterType.TASK_DATA)
        job.to_clients(LedgerPayloadRecorder(), tasks=["train"], filter_type=FilterType.TASK_RESULT)
        super().__init__(job)


class FedSegNetRecipe(FedSegNetFedAvgRecipe):
    """FedSegNet's job (``jobs/fedsegnet``): AAM aggregation of compressed updates (both ways), a
    rejected update skipped rather than ending the job. Takes the arguments of
    :class:`FedSegNetFedAvgRecipe`; defaults differ in ``name="fedsegnet"``, ``compression=True``,
    ``ignore_result_error=True``, ``aggregation="aam"``.
    """

    def __init__(
        self,
        name: str = "fedsegnet",
        compression: bool = True,
        ignore_result_error: bool | None = True,
        aggregation: str | None = "aam",
        **kwargs,
    ):
        super().__init__(
            name=name, compression=compression, ignore_result_error=ignore_result_error, aggregation=aggregation, **kwargs
        )


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fedsegnet.flare.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=("sim", "poc", "prod"), default="sim", help="where to run")
    p.add_argument("--data-root", help="site data root (default: FEDSEGNET_DATA_ROOT at each site)")
    p.add_argument("--workspace", default="/tmp/fedsegnet/sim", help="simulator workspace root (sim)")
    p.add_argument("--clients", type=int, default=2, help="number of sites site-1..site-N (sim, poc)")
    p.add_argument("--threads", type=int, default=None, help="sites trained in parallel (sim)")
    p.add_argument("--startup-kit", help="admin startup kit folder (prod)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=50)
    p.add_argument("--preset", default="cpu", help="generic (tiny, cpu, gpu, ...) or dataset preset (synthetic, brats, lits, acdc)")
    p.add_argument("--num-classes", type=int, default=None, help="classes incl. background (default: the preset's)")
    p.add_argument("--in-channels", type=int, default=None, help="image channels (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--job", choices=("fedavg", "fedsegnet"), default="fedavg", help="which job")
    p.add_argument("--up-ratio", type=float, default=0.1, help="fedsegnet: share of values a site sends")
    p.add_argument("--up-bits", type=int, default=4, help="fedsegnet: bits per value a site sends")
    p.add_argument("--down-ratio", type=float, default=0.1, help="fedsegnet: share the server sends")
    p.add_argument("--down-bits", type=int, default=4, help="fedsegnet: bits per value the server sends")
    p.add_argument(
        "--aggregation", choices=("aam", "mean", "median", "trimmed_mean"), default=None,
        help="fedsegnet: aggregation rule (default aam)",
    )  # fmt: skip
    p.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal weight at the sites (0 = off)")
    p.add_argument("--network", default=None, help="override the preset's network (e.g. dca_unetr)")
    p.add_argument("--personalization", choices=("none", "fedbn", "ditto", "finetune", "dca"), default="none",
                   help="personalised models at the sites (dca needs --network dca_unetr)")
    p.add_argument("--boundary-weight", type=float, default=0.0, help="perturbed boundary loss weight (0 = off)")
    p.add_argument("--name", default=None, help="job name (default: the job's)")
    p.add_argument("--resume-from", default="", help="id of an interrupted job of this server to continue")
    # FLARE 2.9 reserves --export/--export-dir for its own recipe export (stripped from sys.argv at import)
    p.add_argument("--write-job", dest="export_to", metavar="DIR", help="write the job folder here instead of running it")
    return p.parse_args(argv)


def _build_recipe(args, extra: dict) -> FedSegNetFedAvgRecipe:
    return (FedSegNetRecipe if args.job == "fedsegnet" else FedSegNetFedAvgRecipe)(
        **extra,
        name=args.name,
        num_rounds=args.rounds,
        min_clients=args.clients,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        preset=args.preset,
        local_steps=args.local_steps,
        seed=args.seed,
        data_root=os.path.abspath(args.data_root) if args.data_root else None,
        torch_threads=args.torch_threads,
        fedprox_mu=args.fedprox_mu,
        resume_from=args.resume_from,
        network=args.network,
        personalization=args.personalization,
        boundary_weight=args.boundary_weight,
    )


def main(argv=None) -> int:
    args = _parse(argv if argv is not None else sys.argv[1:])
    extra = {}
    if args.job == "fedsegnet":
        extra = dict(up_ratio=args.up_ratio, up_bits=args.up_bits, down_ratio=args.down_ratio, down_bits=args.down_bits)
        if args.aggregation:
            extra["aggregation"] = args.aggregation
    args.name = args.name or args.job
    try:
        recipe = _build_recipe(args, extra)
    except ConfigError as e:  # a bad value, named, before anything is written or started
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.export_to:
        recipe.export(args.export_to)
        print(f"job written to {os.path.join(args.export_to, args.name)}")
        return 0
    if args.env == "sim":
        from nvflare.recipe.sim_env import SimEnv

        from fedsegnet.flare.ops.policy import write_site_policy

        root = os.path.abspath(args.workspace)
        write_site_policy(os.path.join(root, args.name, "local"), create=True)
        env = SimEnv(num_clients=args.clients, num_threads=args.threads, workspace_root=root)
    elif args.env == "poc":
        from nvflare.recipe.poc_env import PocEnv

        env = PocEnv(num_clients=args.clients)
    else:
        from nvflare.recipe.prod_env import ProdEnv

        if not args.startup_kit:
            print("--startup-kit is required with --env prod", file=sys.stderr)
            return 2
        env = ProdEnv(startup_kit_location=args.startup_kit)
    run = recipe.execute(env)
    print(f"job {run.get_job_id()} finished; result: {run.get_result()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
