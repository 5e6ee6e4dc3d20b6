"""Recipe -> composer.Trainer: every part built from its config, nothing trained here."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from composer import Evaluator, Trainer
from composer.callbacks import LRMonitor
from composer.loggers import WandBLogger
from composer.utils import dist, maybe_create_object_store_from_uri, parse_uri, reproducibility

from flexbert.io.checkpoint_reader import guard_composer_loads
from flexbert.model.compile import compile_options, scope_compiled_forward
from flexbert.runtime.composer_model import ComposerFlexBertMLM
from flexbert.runtime.device import pick_device, pick_precision
from flexbert.runtime.metrics_file import MetricsJSONL
from flexbert.runtime.perf import device_peak_flops, flops_per_token
from flexbert.train.callbacks.nonfinite import StopOnNonFiniteLoss
from flexbert.train.callbacks.telemetry import GradNorm, PackingEfficiency, Throughput
from flexbert.train.checkpointing.saver import AtomicCheckpointSaver, local_save_folder
from flexbert.train.distributed.fsdp import apply_activation_checkpointing, composer_fsdp
from flexbert.train.distributed.gloo import GlooGradientAverage
from flexbert.train.optim import ApplyOptimizerConfig, build_optimizer
from flexbert.train.recipe import data as train_data
from flexbert.train.recipe.schema import Recipe, RecipeConfig, TrainerConfig
from flexbert.train.registries import ALGORITHMS, CALLBACKS, build_all
from flexbert.train.schedules import build_scheduler

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "ep{epoch}-ba{batch}-rank{rank}.pt"
LATEST_NAME = "latest-rank{rank}.pt"


def gpu_only(cfg: TrainerConfig, device: str) -> dict[str, Any]:
    """compile / FSDP keyword arguments, dropped (with a log line) where they cannot run
    (compile on CPU unless asked, FSDP version 1 on CPU)."""
    kwargs: dict[str, Any] = {}
    if cfg.compile and (device == "gpu" or cfg.compile_on_cpu):
        kwargs["compile_config"] = compile_options()
    elif cfg.compile:
        log.warning("trainer.compile is on but the device is CPU; set trainer.compile_on_cpu=true "
                    "to compile anyway")
    fsdp = composer_fsdp(cfg.fsdp, device)
    if fsdp is not None:
        kwargs["parallelism_config"] = {"fsdp": fsdp}
    return kwargs


def build_saver(cfg: RecipeConfig) -> Optional[AtomicCheckpointSaver]:
    if not cfg.save_folder:
        return None
    backend, _, prefix = parse_uri(cfg.save_folder)
    remote = f"{prefix.rstrip('/')}/" if backend and prefix else ""
    return AtomicCheckpointSaver(
        folder=cfg.save_folder,
        filename=CHECKPOINT_NAME,
        remote_file_name=remote + CHECKPOINT_NAME if backend else None,
        latest_filename=LATEST_NAME,
        # Composer's autoresume asserts a remote latest name even for local folders; it is only
        # used when remote_file_name is set.
        latest_remote_file_name=remote + LATEST_NAME,
        save_interval=cfg.save_interval,
        overwrite=cfg.save_overwrite or cfg.autoresume or cfg.restart,
        num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
    )


def metrics_logger(cfg: RecipeConfig) -> Optional[MetricsJSONL]:
    """metrics.jsonl in save_folder; for an object-store folder it is kept locally and uploaded
    at the end of fit (and fetched first, so a resumed run appends to it)."""
    name = cfg.callbacks.metrics_jsonl
    if not name or not cfg.save_folder:
        return None
    backend, _, prefix = parse_uri(cfg.save_folder)
    local = os.path.join(local_save_folder(cfg.save_folder), name)
    if not backend:
        return MetricsJSONL(local)
    store = maybe_create_object_store_from_uri(cfg.save_folder)
    key = f"{prefix.rstrip('/')}/{name}".lstrip("/")
    if dist.get_global_rank() == 0 and not os.path.exists(local):
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        try:
            store.download_object(key, local)
        except FileNotFoundError:
            pass
    return MetricsJSONL(local, upload=lambda path: store.upload_object(key, path))


def _wandb_compat() -> None:
    """Composer 0.32.1's WandBLogger calls `Run.get_url()`, which newer wandb releases replaced
    by the `url` property; restore the method so the pinned Composer works with them."""
    from wandb.sdk.wandb_run import Run

    if not hasattr(Run, "get_url"):  # offline runs have no URL: asking for it prints a warning
        Run.get_url = lambda self: None if self.offline else self.url


def step_work(cfg: RecipeConfig, seq_len: int):
    """Token slots before a step, for the console's ETA when a batch-size warmup makes early
    steps smaller; None without one (every step then costs the same)."""
    batch = cfg.batch
    if batch.warmup_start is None:
        return None
    from flexbert.data.schedule import RowSchedule

    return RowSchedule(batch.global_train_batch_size, seq_len, 1, batch.warmup_start,
                       int(batch.warmup_tokens)).tokens_before


def build_loggers(cfg: RecipeConfig, seq_len: int = 0) -> list:
    from flexbert.train.callbacks.console import Console

    tcfg = cfg.trainer  # our console replaces Composer's progress bar and console logger
    loggers: list = [Console(tcfg.console_log_interval, tcfg.log_to_console, tcfg.progress_bar,
                             work=step_work(cfg, seq_len) if seq_len else None)]
    loggers += [m for m in [metrics_logger(cfg)] if m is not None]
    wb = cfg.loggers.wandb
    if wb.enabled:
        # wandb writes into <dir>/wandb/, so <save_folder> as its dir gives <save_folder>/wandb
        folder = wb.dir or local_save_folder(cfg.save_folder or ".")
        os.makedirs(folder, exist_ok=True)
        os.environ.setdefault("WANDB_MODE", wb.mode)
        _wandb_compat()
        loggers.append(WandBLogger(project=wb.project, entity=wb.entity, name=cfg.run_name,
                                   tags=list(wb.tags) or None,
                                   init_kwargs={"mode": wb.mode, "dir": folder}))
    return loggers


def build_callbacks(recipe: Recipe) -> list:
    cfg = recipe.cfg
    seq_len, mask_rate = train_data.seq_len_and_mask_rate(recipe.data)
    callbacks: list = [GlooGradientAverage(), Throughput(cfg.callbacks.throughput_window,
                                  flops_per_token(recipe.model, seq_len, mask_rate),
                                  device_peak_flops())]
    if cfg.callbacks.lr_monitor:
        callbacks.append(LRMonitor())
    clip = cfg.trainer.grad_clip_norm
    if cfg.callbacks.grad_norm or clip > 0:  # one norm per step serves the log and the clipping
        callbacks.append(GradNorm(clip, log=cfg.callbacks.grad_norm))
    if cfg.callbacks.packing_efficiency:
        callbacks.append(PackingEfficiency(train_data.packing_efficiency))
    callbacks += build_all(CALLBACKS, cfg.callbacks.registered, "callbacks", recipe.source)
    from flexbert.train.callbacks.downstream_eval import build_downstream_eval

    saver = build_saver(cfg)  # before Publish: a step's checkpoint is on disk before its upload
    return (callbacks + ([saver] if saver else []) + publish_callbacks(recipe)
            + build_downstream_eval(cfg))


def publish_callbacks(recipe: Recipe) -> list:
    """PhaseInfo (the model config, phase, step and tokens in every checkpoint, for `flexbert
    publish`) and, when `callbacks.publish.enabled`, the Publish callback."""
    from flexbert.train.callbacks.publish import PhaseInfo, Publish
    from flexbert.train.checkpointing.provenance import made_from

    cfg, pub = recipe.cfg, recipe.cfg.callbacks.publish
    tokenizer = pub.tokenizer or cfg.export.tokenizer or os.path.join(cfg.data_dir, "tokenizer")
    tokenizer = os.path.abspath(tokenizer) if os.path.isdir(tokenizer) else tokenizer
    info = PhaseInfo(recipe.model, cfg.phase or cfg.run_name, cfg.run_name,
                     train_data.seq_len_and_mask_rate(recipe.data)[0], tokenizer, recipe.init_from,
                     made_from(recipe))
    if not (pub.enabled and cfg.save_folder):
        return [info]
    folder = pub.folder if os.path.isabs(pub.folder) else os.path.join(
        local_save_folder(cfg.save_folder), pub.folder)
    return [info, Publish(folder, info, pub.every, pub.at_end, pub.repo_id, pub.revision,
                          tokenizer)]


def eval_microbatch(recipe: Recipe) -> int:
    """Eval splits like training (int microbatch) or not at all (whole per-rank batch)."""
    batch, micro = recipe.cfg.batch, recipe.cfg.trainer.device_train_microbatch_size
    rows = (batch.global_eval_batch_size or batch.global_train_batch_size) // train_data.world_size()
    return min(int(micro), rows) if isinstance(micro, int) else rows


# What a new phase drops from the previous phase's checkpoint to restart its clocks: the
# timestamp, the schedule's step count and the data position; weights and optimizer state stay.
RESET_TIME_KEYS = ["state/timestamp", "state/schedulers", "state/dataset_state"]


def load_ignore_keys(cfg: RecipeConfig) -> Optional[list[str]]:
    """`reset_time` as checkpoint keys to skip. Composer applies load_ignore_keys only to
    load_path, never to an autoresume checkpoint, so a resumed phase keeps its own clock."""
    keys = list(cfg.load_ignore_keys) + (RESET_TIME_KEYS if cfg.reset_time else [])
    return keys or None


def eval_schedule(interval: str):
    """Every `interval` and once more at the last step (also when the run is shorter than the
    interval), inside that step so metrics.jsonl records it; Composer's own end-of-fit eval runs
    after the loggers have closed."""
    from composer.core import Event
    from composer.utils.misc import create_interval_scheduler

    return create_interval_scheduler(interval, checkpoint_events=False,
                                     final_events={Event.BATCH_END})


def build_algorithms(recipe: Recipe) -> list:
    # trainer.grad_clip_norm is applied by the GradNorm callback (see build_callbacks).
    return build_all(ALGORITHMS, recipe.cfg.algorithms, "algorithms", recipe.source)


def quiet_stateless_callbacks(callbacks: list) -> None:
    """A new phase loads a checkpoint whose run had no such callback (phase 1 does not publish):
    Composer then warns "<Callback> is not in the state_dict" for each. A callback that keeps no
    state (its state_dict is empty) has nothing to restore, so that warning is noise for it."""
    import re
    import warnings

    for callback in callbacks:
        try:
            stateless = callback.state_dict() == {}
        except Exception:  # a plugin that needs a started run to answer: leave its warning on
            stateless = False
        if stateless:
            name = re.escape(type(callback).__qualname__)
            warnings.filterwarnings("ignore", message=rf"{name} is not in the state_dict\.",
                                    category=UserWarning)


def build_trainer(recipe: Recipe) -> Trainer:
    """Model, data, optimizer, schedule, callbacks, loggers and checkpointing -> Trainer."""
    cfg, tcfg = recipe.cfg, recipe.cfg.trainer
    guard_composer_loads(cfg.trust_checkpoint)  # load_path / autoresume: never a full unpickle
    reproducibility.seed_all(cfg.seed)  # the same initial weights on every rank and every run
    from flexbert.model import FlexBertForMaskedLM

    model = ComposerFlexBertMLM(FlexBertForMaskedLM(recipe.model), train_metrics=tcfg.train_metrics)
    apply_activation_checkpointing(model.model, tcfg.activation_checkpointing)
    if recipe.init_from:  # continual pretraining: weights only, the optimizer below starts fresh
        from flexbert.train.checkpointing.init_from import load_init_weights

        load_init_weights(model.model, recipe.init_from, cfg.trust_checkpoint)
    device = pick_device(tcfg.device)
    optimizer = build_optimizer(model.model, cfg.optimizer)
    keep_config = ApplyOptimizerConfig(cfg.optimizer.lr,
                                       [g["weight_decay"] for g in optimizer.param_groups])
    loggers = build_loggers(cfg, train_data.seq_len_and_mask_rate(recipe.data)[0])
    jsonl = next((d for d in loggers if isinstance(d, MetricsJSONL)), None)
    stop_on_nan = StopOnNonFiniteLoss(jsonl.flush if jsonl else None)  # first: before any save
    train_spec = train_data.train_dataspec(recipe)
    from flexbert.train.recipe.preflight import evaluates

    callbacks = [stop_on_nan, keep_config, *build_callbacks(recipe)]
    quiet_stateless_callbacks(callbacks)
    evaluator = Evaluator(label="eval", dataloader=train_data.eval_dataspec(recipe),
                          metric_names=list(model.eval_metrics),
                          device_eval_microbatch_size=eval_microbatch(recipe)) \
        if evaluates(recipe) else None
    extra = gpu_only(tcfg, device)
    trainer = Trainer(
        model=model, run_name=cfg.run_name, seed=cfg.seed, device=device,
        train_dataloader=train_spec, eval_dataloader=evaluator, max_duration=cfg.max_duration,
        eval_interval=eval_schedule(cfg.eval_interval),
        eval_subset_num_batches=tcfg.eval_subset_num_batches,
        optimizers=optimizer,
        schedulers=build_scheduler(cfg.scheduler), step_schedulers_every_batch=True,
        precision=pick_precision(tcfg.precision, device),
        device_train_microbatch_size=tcfg.device_train_microbatch_size,
        accumulate_train_batch_on_tokens=True,
        algorithms=build_algorithms(recipe),
        callbacks=callbacks, loggers=loggers,
        autoresume=cfg.autoresume, load_path=cfg.load_path,
        load_weights_only=cfg.load_weights_only, load_strict_model_weights=cfg.load_strict,
        load_ignore_keys=load_ignore_keys(cfg), load_progress_bar=False,
        ddp_sync_strategy=tcfg.ddp_sync_strategy, dist_timeout=tcfg.dist_timeout,
        progress_bar=False, log_to_console=False,  # flexbert.train.callbacks.console prints instead
        python_log_level=tcfg.python_log_level,
        **extra,
    )
    if "compile_config" in extra:
        scope_compiled_forward(trainer.state.model)
    return trainer
