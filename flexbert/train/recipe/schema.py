"""The recipe schema: the typed trees one recipe YAML is merged onto (loading: recipe.load).

A recipe names a model preset (`model.preset`, a path relative to the recipe file) and overrides
any of its keys; `data`, `optimizer`, `scheduler`, `trainer`, `loggers`, `callbacks` and `export`
are typed here so a misspelt key fails at load time with its full path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from flexbert.config import ModelConfig


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
    # Batches per evaluation. The packed eval stream has no end (Composer's -1, "all", cannot
    # apply), so the default is a number, as in the shipped recipes.
    eval_subset_num_batches: int = 100
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
    flexbert/io/publish.py and docs/recipe.md."""

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
    training goes on; see flexbert/train/callbacks/downstream_eval.py and docs/evaluation.md."""

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


