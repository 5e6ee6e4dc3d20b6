"""The recipe schema: one YAML file -> typed, validated trees, before anything is built.

A recipe names a model preset (`model.preset`, a path relative to the recipe file) and overrides
any of its keys; `data`, `optimizer`, `scheduler`, `trainer`, `loggers`, `callbacks` and `export`
are typed here so a misspelt key fails at load time with its full path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from flexbert.config import ConfigError, ModelConfig, load_yaml, model_config, structured


@dataclass
class OptimizerConfig:
    name: str = "stable_adamw"
    lr: float = 8e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 1e-5
    decay_norms_and_biases: bool = False
    decay_embeddings: bool = True
    # Passed to the optimizer as keyword arguments (e.g. kahan_sum for optimi).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchConfig:
    """Global sizes in rows (packed sequences); each rank loads 1/world of them."""

    global_train_batch_size: int = 32
    global_eval_batch_size: Optional[int] = None  # default: the train size
    warmup_start: Optional[int] = None      # global rows at step 0; None = no batch-size warmup
    warmup_tokens: int = 0                  # tokens over which rows grow to the full batch


@dataclass
class FsdpConfig:
    """`trainer.fsdp`: sharded data parallelism through Composer. Version 1 is torch's
    FullyShardedDataParallel (GPUs only; dropped with a log line on CPU); version 2 is
    `fully_shard` on DTensors (GPUs and CPU/gloo). Each encoder layer is its own unit; embeddings,
    head and the tied decoder share the root unit. Keys marked v1 exist only in version 1."""

    version: int = 1                        # 1: FullyShardedDataParallel, 2: fully_shard (FSDP2)
    sharding_strategy: str = "FULL_SHARD"   # v2: FULL_SHARD or SHARD_GRAD_OP (keep params after forward)
    state_dict_type: str = "full"           # full: one .pt on rank 0; sharded: a folder per checkpoint
    mixed_precision: str = "DEFAULT"        # DEFAULT, PURE or FULL (Composer's presets)
    load_monolith_rank0_only: bool = False  # read a full checkpoint on rank 0 and broadcast
    verbose: bool = False
    cpu_offload: bool = False               # v1
    limit_all_gathers: bool = True          # v1
    forward_prefetch: bool = False          # v1
    backward_prefetch: str = "BACKWARD_POST"  # v1: BACKWARD_PRE, BACKWARD_POST or NONE
    sync_module_states: bool = False        # v1 (every rank builds the same weights from the seed)
    data_parallel_shard_degree: int = -1    # v1, HSDP: ranks per shard group (-1: all)
    data_parallel_replicate_degree: Optional[int] = None  # v1, HSDP: replicas


@dataclass
class TrainerConfig:
    device: Optional[str] = None            # None: gpu when CUDA is available, else cpu
    precision: str = "amp_bf16"             # amp_* falls back to fp32 on CPU (with a log line)
    device_train_microbatch_size: Any = None  # int, "auto", or None (whole per-rank batch)
    grad_clip_norm: float = 0.0             # > 0 clips the global L2 norm
    compile: bool = False                   # torch.compile via Composer's compile_config
    compile_on_cpu: bool = False            # inductor on CPU is slow to compile; opt in
    fsdp: Optional[FsdpConfig] = None       # null: DDP (one process per device)
    activation_checkpointing: int = 0       # 0 off, 1 every encoder layer, n every n-th layer
    ddp_sync_strategy: Optional[str] = None
    dist_timeout: float = 300.0
    train_metrics: bool = True              # masked loss/accuracy on training batches
    eval_subset_num_batches: int = -1
    log_to_console: bool = True
    console_log_interval: str = "1ba"
    progress_bar: bool = True
    python_log_level: Optional[str] = None


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "flexbert"
    entity: Optional[str] = None
    mode: str = "offline"                   # offline needs no key and no network
    dir: Optional[str] = None               # runs land in <dir>/wandb; default dir: <save_folder>
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggersConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PublishConfig:
    """Hugging Face folders (and optional Hub uploads) written while training; see
    flexbert/train/publish.py and docs/recipe.md."""

    enabled: bool = False
    every: Optional[str] = None             # a time string ("25000000000tok", "1000ba"); None: only at_end
    at_end: bool = True                     # the phase's final weights
    folder: str = "published"               # under save_folder; one sub-folder per publication
    repo_id: Optional[str] = None           # upload with huggingface_hub when set
    revision: str = "{phase}-step{step}"    # branch name; {phase}, {step}, {tokens} are filled in
    tokenizer: Optional[str] = None         # default: export.tokenizer, then <data_dir>/tokenizer


@dataclass
class DownstreamEvalConfig:
    """Fine-tune and evaluate snapshots of the training weights in a separate process while
    training goes on; see flexbert/evaluation/callback.py and docs/evaluation.md."""

    enabled: bool = False
    tasks: list[str] = field(default_factory=list)   # `flexbert eval --tasks` entries
    seeds: list[int] = field(default_factory=lambda: [17])
    every: Optional[str] = None             # time string ("1000000tok", "500ba"); None: see below
    at_checkpoint: bool = False             # every save_interval (when `every` is not set)
    at_end: bool = True                     # the phase's final weights
    options: dict[str, Any] = field(default_factory=dict)  # flexbert finetune keys: epochs, lr, ...
    device: str = "cpu"                     # where evaluations run; cpu leaves the GPU to training
    folder: str = "downstream"              # under save_folder: step<N>/{model,results.jsonl,...}
    wait_at_end: float = 600.0              # seconds the end of training waits for evaluations
    max_parallel: int = 1                   # evaluations running at once; later ones queue


@dataclass
class CallbacksConfig:
    throughput_window: int = 20
    lr_monitor: bool = True
    grad_norm: bool = True
    packing_efficiency: bool = True
    metrics_jsonl: str = "metrics.jsonl"    # under save_folder ("" disables)
    publish: PublishConfig = field(default_factory=PublishConfig)
    downstream_eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)
    # Callbacks from the `callback` registry, written directly under `callbacks:` by name
    # (`callbacks.memory_monitor: {}`, `callbacks.loss_spike: {factor: 3}`); load_recipe moves
    # them here. Values: keyword arguments, {} / true (defaults) or false (off).
    registered: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportConfig:
    hf_folder: Optional[str] = "hf"          # under save_folder; null disables
    tokenizer: Optional[str] = None          # default: <data_dir>/tokenizer when present


@dataclass
class RecipeConfig:
    data_dir: str = MISSING
    run_name: str = MISSING
    phase: Optional[str] = None             # the training phase's name (model cards); default run_name
    seed: int = 17
    max_duration: str = MISSING
    eval_interval: str = "1000ba"
    save_folder: Optional[str] = None
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False            # forced on with autoresume (a crashed write is redone)
    restart: bool = False                   # remove save_folder's previous run first, then train
    autoresume: bool = False
    load_path: Optional[str] = None
    load_weights_only: bool = False
    load_strict: bool = True
    load_ignore_keys: list[str] = field(default_factory=list)
    reset_time: bool = False                # a new phase restarts the time counters
    trust_checkpoint: bool = False          # foreign classes load as inert stubs (never run)
    model: Any = None                       # {preset: model/x.yaml, <ModelConfig overrides>}
    data: Any = None                        # flexbert.data's DataConfig (validated there)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "warmup_stable_decay"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loggers: LoggersConfig = field(default_factory=LoggersConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # Composer algorithms by registry name with their keyword arguments: {ema: {half_life: 500ba}}.
    algorithms: dict[str, Any] = field(default_factory=dict)
    # Modules imported before the recipe is validated, so the components they register (a norm,
    # a kernel, a callback ...) can be named in it: [mypackage.flexbert_parts].
    plugins: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    """A loaded recipe: the validated tree plus the built ModelConfig and the data tree."""

    cfg: RecipeConfig
    model: ModelConfig
    data: Any
    source: str
    init_from: Optional[str] = None         # model.init_from: weights to start from (fresh optimizer)


def resolve_model_tree(tree: Any, recipe_path: Path) -> DictConfig:
    """Load `preset` (relative to the recipe's folder, or absolute) and merge the recipe's own
    model keys over it."""
    tree = OmegaConf.create({} if tree is None else tree)
    preset = tree.pop("preset", None)
    if preset is None:
        return tree
    path = Path(preset)
    if not path.is_absolute():
        path = recipe_path.parent / path
    base = load_yaml(path)
    base = base.model if "model" in base else base
    return OmegaConf.merge(base, tree)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (`key=value`), type-check and validate a recipe; raise ConfigError naming
    the offending key before anything is built."""
    path = Path(path)
    raw = load_yaml(path, overrides)
    _load_plugins(raw, str(path))
    _collect_registered_callbacks(raw, str(path))
    merged = structured(RecipeConfig, raw, str(path))
    _require_set(merged, str(path))
    has_preset = merged.model is not None and merged.model.get("preset") is not None
    from flexbert.train.preflight import check_positions, check_values

    # Plain values first: the data adapter below divides the global batch by the rank count.
    check_values(OmegaConf.to_object(merged), str(path))
    model_tree = resolve_model_tree(merged.model, path)
    init_from = model_tree.pop("init_from", None)
    if init_from and has_preset:  # a typo in a local path: one line now, not a Hub download later
        from flexbert.checkpoint_reader import source_kind

        try:
            source_kind(init_from)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if init_from and not has_preset:  # the architecture comes from the source, the recipe overrides
        from flexbert.train.continual import source_model_config

        model = source_model_config(init_from, model_tree, str(path),
                                    trust=bool(merged.trust_checkpoint))
    else:
        model = model_config(model_tree, str(path), "model")
    data = _data_config(merged, str(path))
    cfg: RecipeConfig = OmegaConf.to_object(merged)
    cfg.model, cfg.data = OmegaConf.to_container(model_tree), data
    cfg.phase = cfg.phase or cfg.run_name
    if cfg.save_folder:  # "{run_name}" as Composer formats it; every path below uses this one
        cfg.save_folder = cfg.save_folder.replace("{run_name}", cfg.run_name)
    _validate(cfg, str(path))
    if init_from and cfg.load_path:
        raise ConfigError(f"{path}: model.init_from: cannot be combined with load_path (init_from "
                          "starts from weights with a fresh optimizer; load_path continues a run)")
    recipe = Recipe(cfg=cfg, model=model, data=data, source=str(path), init_from=init_from)
    check_positions(recipe)
    return recipe


def _load_plugins(raw: DictConfig, source: str) -> None:
    """Import the recipe's `plugins:` (and installed entry-point plugins) before anything else
    reads a component name."""
    from flexbert.components import load_entry_point_plugins, load_plugins

    plugins = raw.get("plugins") or []
    if isinstance(plugins, str) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of module names, got {plugins!r}")
    load_entry_point_plugins()
    load_plugins(list(plugins), source)


def _collect_registered_callbacks(raw: DictConfig, source: str) -> None:
    """Move `callbacks.NAME` entries that name a registered callback into
    `callbacks.registered`; any other unknown key fails with both lists."""
    import dataclasses

    from flexbert.train.extensions import CALLBACKS

    callbacks = raw.get("callbacks")
    if not isinstance(callbacks, DictConfig):
        return
    fields = [f.name for f in dataclasses.fields(CallbacksConfig)]
    for name in [k for k in callbacks if k not in fields]:
        if name not in CALLBACKS:
            raise ConfigError(f"{source}: callbacks.{name}: unknown key; allowed keys: "
                              f"{', '.join(fields)}; registered callbacks: "
                              f"{', '.join(CALLBACKS.names())}")
        with open_dict(callbacks):
            if callbacks.get("registered") is None:
                callbacks.registered = {}
            callbacks.registered[name] = callbacks.pop(name)


def _require_set(merged: DictConfig, source: str) -> None:
    for key in ("data_dir", "run_name", "max_duration"):
        if OmegaConf.is_missing(merged, key):
            raise ConfigError(f"{source}: {key}: required (set it in the YAML or as {key}=...)")


def _data_config(merged: DictConfig, source: str) -> Any:
    """The data tree typed by the data package's schema, with data_dir filled in."""
    from flexbert.train.data import data_config

    return data_config(merged.data, merged.data_dir, OmegaConf.to_object(merged.batch), source)


def _validate(cfg: RecipeConfig, source: str) -> None:
    from composer.core import Time

    from flexbert.train.optim import OPTIMIZERS
    from flexbert.train.schedules import SCHEDULERS

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    if cfg.optimizer.name not in OPTIMIZERS:
        fail("optimizer.name", f"unknown optimizer {cfg.optimizer.name!r}; allowed: "
             f"{', '.join(OPTIMIZERS.names())}")
    name = cfg.scheduler.get("name")
    if name not in SCHEDULERS:
        fail("scheduler.name", f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS.names())}")
    try:
        from flexbert.train.schedules import build_scheduler

        build_scheduler(cfg.scheduler)
    except ValueError as err:
        fail("scheduler", str(err))
    if cfg.callbacks.publish.enabled and (
            not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cfg.phase) or ".." in cfg.phase):
        fail("phase", f"{cfg.phase!r} is not a safe name (letters, digits, '.', '_', '-'; it "
             "names published folders and Hub branches)")
    if cfg.autoresume and not cfg.save_folder:
        fail("autoresume", "needs save_folder (where the checkpoints to resume from live)")
    publish = cfg.callbacks.publish
    if publish.enabled and publish.every:
        try:
            Time.from_timestring(str(publish.every))
        except ValueError:
            fail("callbacks.publish.every", f"{publish.every!r} is not a time string such as "
                 "'1000000tok' or '100ba'")
    if publish.enabled and not cfg.save_folder:
        fail("callbacks.publish.enabled", "needs save_folder (published folders go under it)")
    _validate_trainer(cfg, fail)
    from flexbert.evaluation.callback import check_downstream_config

    check_downstream_config(cfg, source)
    _validate_extensions(cfg, source)
    if cfg.loggers.wandb.mode not in ("online", "offline", "disabled"):
        fail("loggers.wandb.mode", f"{cfg.loggers.wandb.mode!r}; allowed: online, offline, disabled")


def _validate_trainer(cfg: RecipeConfig, fail) -> None:
    from flexbert.train.fsdp import validate_fsdp

    every = cfg.trainer.activation_checkpointing
    if every < 0:
        fail("trainer.activation_checkpointing", "0 (off), 1 (every encoder layer) or n (every "
             f"n-th layer), got {every}")
    if cfg.trainer.fsdp is not None:
        validate_fsdp(cfg.trainer, cfg.optimizer.name, fail)


def _validate_extensions(cfg: RecipeConfig, source: str) -> None:
    """Build the registered callbacks and algorithms once, so a wrong name or argument fails
    here, naming its key, rather than after the model is built."""
    from flexbert.train.extensions import ALGORITHMS, CALLBACKS, build_all

    try:
        build_all(CALLBACKS, cfg.callbacks.registered, "callbacks", source)
        build_all(ALGORITHMS, cfg.algorithms, "algorithms", source)
    except ValueError as err:
        raise ConfigError(str(err)) from None
