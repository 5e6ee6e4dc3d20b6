"""`flexbert plan RECIPE [RECIPE ...] [--gpus 8xH100]`: validate recipes the way train.py does
and estimate, per phase, what a run will need before anyone spends GPU-hours on it.

Figures per phase: parameters, model and optimizer state, activation memory per microbatch
(measured on the meta device in bf16, see activations.py), training FLOPs per token (the MFU
callback's formula), steps and tokens (batch-size warmup included), the largest microbatch that
fits the GPU with and without activation checkpointing, and GPU-hours at a stated MFU.

A single recipe also plans the shipped phases that follow it: a recipe in the same folder whose
`load_path` lies in this one's `save_folder` continues it (base -> context_extension -> decay).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from flexbert.commands import command
from flexbert.config import ConfigError

GIB = 1 << 30
# Memory per GPU (GiB, as the cards are sold) for `--gpus NxNAME`; peak bf16 FLOP/s come from
# flexbert.runtime.perf.PEAK_FLOPS, the table the MFU callback uses.
GPU_MEMORY_GIB = {"H200": 141, "H100": 80, "A100": 80, "A100-40": 40, "L40S": 48, "A10G": 24,
                  "L4": 24, "4090": 24, "V100": 32}
HEADROOM = 0.90        # of GPU memory for states + activations; the rest: CUDA context, allocator
DEFAULT_MFU = 0.35
STATE_BYTES_PER_PARAM = 4 + 4  # fp32 master weights + fp32 gradients (Composer's amp_bf16)


@dataclass
class GpuSpec:
    count: int
    name: str
    memory_bytes: int
    peak_flops: float


def parse_gpus(text: str) -> GpuSpec:
    """`8xH100` -> 8 GPUs of 80 GiB at 989 TFLOP/s (bf16 dense)."""
    from flexbert.runtime.perf import PEAK_FLOPS

    match = re.fullmatch(r"(\d+)x([\w-]+)", text.strip(), flags=re.IGNORECASE)
    names = {n.upper(): n for n in GPU_MEMORY_GIB}
    if not match or match.group(2).upper() not in names or int(match.group(1)) < 1:
        raise ValueError(f"--gpus {text!r}: expected COUNTxNAME such as 8xH100; names: "
                         f"{', '.join(GPU_MEMORY_GIB)}")
    name = names[match.group(2).upper()]
    peak = next(f for key, f in PEAK_FLOPS if key in name.split("-")[0])
    return GpuSpec(int(match.group(1)), name, GPU_MEMORY_GIB[name] * GIB, peak)


@dataclass
class PhasePlan:
    """One phase's figures (all per GPU unless the name says otherwise); JSON-ready."""

    recipe: str
    phase: str
    problems: list[str] = field(default_factory=list)     # "error: ..." / "warning: ..."
    parameters: int = 0
    state_bytes: int = 0              # weights + grads + optimizer state on one GPU
    optimizer_state_bytes: int = 0    # the optimizer's share of state_bytes (one GPU)
    seq_len: int = 0
    microbatch_rows: Optional[int] = None
    global_batch_rows: int = 0        # all GPUs, one optimizer step (after the batch-size warmup)
    accumulation_steps: int = 1       # microbatches per GPU per step: rows / GPU over microbatch
    activation_bytes: int = 0         # one microbatch, no checkpointing
    activation_bytes_checkpointed: int = 0
    flops_per_token: float = 0.0
    tokens: Optional[int] = None
    steps: Optional[int] = None
    max_microbatch: int = 0
    max_microbatch_checkpointed: int = 0
    gpu_hours: Optional[float] = None
    wall_hours: Optional[float] = None


# --- figures ---------------------------------------------------------------------------------

def optimizer_state_per_param(opt_cfg: Any) -> float:
    """Bytes of optimizer state per parameter, measured: one step of the recipe's optimizer on
    a small fp32 layer (Adam-family optimizers keep two fp32 moments: 8 bytes)."""
    import torch

    from flexbert.train.optim import OPTIMIZERS

    layer = torch.nn.Linear(64, 64, bias=False)
    groups = [{"params": list(layer.parameters()), "weight_decay": opt_cfg.weight_decay}]
    opt = OPTIMIZERS.get(opt_cfg.name)(groups, lr=opt_cfg.lr, betas=opt_cfg.betas,
                                        eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay,
                                        **dict(opt_cfg.extra))
    layer.weight.grad = torch.ones_like(layer.weight)
    opt.step()
    state = [t for s in opt.state.values() for t in s.values()
             if isinstance(t, torch.Tensor) and t.dim() > 0]
    return sum(t.numel() * t.element_size() for t in state) / layer.weight.numel()


def step_rows(batch: Any, seq_len: int, max_steps: Optional[int], max_tokens: Optional[int]):
    """(steps, tokens) of a phase, with the batch-size warmup's smaller early steps; tokens
    count full rows (packing fills rows to within a few percent)."""
    from flexbert.data.schedule import RowSchedule

    schedule = RowSchedule(batch.global_train_batch_size, seq_len, 1, batch.warmup_start,
                           batch.warmup_tokens)
    steps, tokens = 0, 0
    while (max_steps is None or steps < max_steps) and (max_tokens is None or tokens < max_tokens):
        rows = schedule.rows(steps)
        if rows == batch.global_train_batch_size:  # past the ramp: the rest in one division
            step_tokens = rows * seq_len
            left = (max_steps - steps) if max_steps is not None else \
                math.ceil((max_tokens - tokens) / step_tokens)
            return steps + left, tokens + left * step_tokens
        steps, tokens = steps + 1, tokens + rows * seq_len
    return steps, tokens


def duration(recipe: Any) -> tuple[Optional[int], Optional[int]]:
    """(steps, tokens) from max_duration in tokens or batches; None for epochs or samples."""
    from composer.core import Time, TimeUnit

    t = Time.from_timestring(str(recipe.cfg.max_duration))
    seq_len = recipe.data.max_seq_len
    if t.unit == TimeUnit.TOKEN:
        return step_rows(recipe.cfg.batch, seq_len, None, int(t.value))
    if t.unit == TimeUnit.BATCH:
        return step_rows(recipe.cfg.batch, seq_len, int(t.value), None)
    return None, None


def largest_fit(budget: float, fixed: float, per_row: float, cap: int) -> int:
    """Rows whose activations fit next to the fixed state, at most `cap` (the per-GPU batch)."""
    if per_row <= 0 or budget <= fixed:
        return 0
    return int(min(cap, (budget - fixed) // per_row))


def phase_figures(plan: PhasePlan, recipe: Any, gpus: GpuSpec, mfu: float) -> None:
    """Fill the estimates of one validated recipe."""
    from flexbert.train.planning.activations import activation_bytes, count_parameters
    from flexbert.runtime.perf import flops_per_token

    cfg, data = recipe.cfg, recipe.data
    plan.seq_len = data.max_seq_len
    plan.parameters = count_parameters(recipe.model)
    shards = gpus.count if cfg.trainer.fsdp else 1
    plan.optimizer_state_bytes = int(plan.parameters * optimizer_state_per_param(cfg.optimizer)
                                     / shards)
    plan.state_bytes = plan.parameters * STATE_BYTES_PER_PARAM // shards + plan.optimizer_state_bytes
    rows_per_gpu = max(1, cfg.batch.global_train_batch_size // gpus.count)
    micro = cfg.trainer.device_train_microbatch_size
    plan.microbatch_rows = micro if isinstance(micro, int) else None
    plan.global_batch_rows = cfg.batch.global_train_batch_size
    plan.accumulation_steps = -(-rows_per_gpu // plan.microbatch_rows) if plan.microbatch_rows else 1
    one = activation_bytes(recipe.model, 1, plan.seq_len, data.mlm_probability)
    measured = activation_bytes(recipe.model, plan.microbatch_rows, plan.seq_len,
                                data.mlm_probability) if plan.microbatch_rows else one
    plan.activation_bytes, plan.activation_bytes_checkpointed = measured.total, measured.checkpointed
    budget = gpus.memory_bytes * HEADROOM
    plan.max_microbatch = largest_fit(budget, plan.state_bytes, one.total, rows_per_gpu)
    plan.max_microbatch_checkpointed = largest_fit(budget, plan.state_bytes, one.checkpointed,
                                                   rows_per_gpu)
    plan.flops_per_token = flops_per_token(recipe.model, plan.seq_len, data.mlm_probability)
    plan.steps, plan.tokens = duration(recipe)
    if plan.tokens is not None:
        plan.gpu_hours = plan.tokens * plan.flops_per_token / (gpus.peak_flops * mfu) / 3600
        plan.wall_hours = plan.gpu_hours / gpus.count
    if plan.microbatch_rows and plan.microbatch_rows > plan.max_microbatch:
        plan.problems.append(f"warning: trainer.device_train_microbatch_size={plan.microbatch_rows} "
                             f"needs more than {gpus.name} memory; at most "
                             f"{plan.max_microbatch} rows fit ({plan.max_microbatch_checkpointed} "
                             "with activation checkpointing)")


def world_checks(recipe: Any, gpus: GpuSpec) -> list[str]:
    """What train.py would refuse with this many ranks: global batches must split evenly."""
    batch = recipe.cfg.batch
    out = []
    for key in ("global_train_batch_size", "global_eval_batch_size", "warmup_start"):
        rows = getattr(batch, key)
        if rows is not None and rows % gpus.count:
            out.append(f"error: {recipe.source}: batch.{key}: {rows} rows do not split evenly "
                       f"over {gpus.count} GPUs")
    return out


def plan_phase(path: str, gpus: GpuSpec, mfu: float) -> PhasePlan:
    """Validate (recipe values, data, tokenizer vs model) and estimate one phase. A recipe that
    train.py would refuse gives an error row; data not on this machine gives a warning row."""
    from flexbert.train.recipe.load import load_recipe
    from flexbert.train.recipe.preflight import check_data

    plan = PhasePlan(recipe=path, phase=Path(path).stem)
    try:
        recipe = load_recipe(path)
    except ConfigError as err:
        plan.problems.append(f"error: {err}")
        return plan
    plan.phase = recipe.cfg.phase or recipe.cfg.run_name
    plan.problems += world_checks(recipe, gpus)
    try:
        check_data(recipe)
    except ConfigError as err:
        missing = "does not exist" in str(err) or "holds no prepared data" in str(err)
        plan.problems.append(f"{'warning' if missing else 'error'}: {err}"
                             + ("; tokenizer not checked" if missing else ""))
    phase_figures(plan, recipe, gpus, mfu)
    return plan


def _chain_keys(path: Path) -> tuple[Optional[str], Optional[str]]:
    """(save_folder, load_path) as written in a recipe; unreadable files give (None, None)."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # noqa: BLE001 (any file that is not a recipe simply continues nothing)
        return None, None
    if not isinstance(raw, dict):
        return None, None
    folder = raw.get("save_folder")
    if isinstance(folder, str):
        folder = folder.replace("{run_name}", str(raw.get("run_name")))
    return folder, raw.get("load_path")


def follow_on_phases(path: str) -> list[str]:
    """Recipes in the same folder that continue this one (their load_path is in its
    save_folder), followed phase by phase."""
    current = Path(path)
    keys = {p: _chain_keys(p) for p in sorted(current.parent.glob("*.yaml"))}
    chain: list[str] = []
    while True:
        folder = keys.get(current, _chain_keys(current))[0]
        nxt = next((p for p, (_, load) in keys.items() if folder and isinstance(load, str)
                    and Path(load).parent == Path(folder) and str(p) not in chain
                    and p != Path(path)), None)
        if nxt is None:
            return chain
        chain.append(str(nxt))
        current = nxt


# --- output ----------------------------------------------------------------------------------

def _size(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _count(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


ROWS = (
    ("recipe", lambda p: p.recipe),
    ("parameters", lambda p: _count(p.parameters)),
    ("weights+grads+optimizer / GPU", lambda p: _size(p.state_bytes)),
    ("  of which optimizer state", lambda p: _size(p.optimizer_state_bytes)),
    ("sequence length", lambda p: str(p.seq_len)),
    ("global batch (rows, tokens)", lambda p: f"{p.global_batch_rows:,} x {p.seq_len} = "
                                              f"{_count(p.global_batch_rows * p.seq_len)}"),
    ("microbatch (rows / GPU)", lambda p: str(p.microbatch_rows or "whole batch")),
    ("gradient accumulation steps", lambda p: str(p.accumulation_steps)),
    ("activations / microbatch", lambda p: _size(p.activation_bytes)),
    ("  with activation checkpointing", lambda p: _size(p.activation_bytes_checkpointed)),
    ("largest microbatch that fits", lambda p: str(p.max_microbatch)),
    ("  with activation checkpointing", lambda p: str(p.max_microbatch_checkpointed)),
    ("training FLOPs / token", lambda p: _count(p.flops_per_token)),
    ("tokens", lambda p: _count(p.tokens)),
    ("steps", lambda p: _count(p.steps)),
    ("GPU-hours", lambda p: "-" if p.gpu_hours is None else f"{p.gpu_hours:,.0f}"),
    ("wall-clock hours", lambda p: "-" if p.wall_hours is None else f"{p.wall_hours:,.1f}"),
)


def render(plans: list[PhasePlan], gpus: GpuSpec, mfu: float) -> str:
    """The console table: one column per phase, then every problem on its own line."""
    head = (f"flexbert plan: {gpus.count}x {gpus.name} ({gpus.memory_bytes // GIB} GiB, "
            f"{gpus.peak_flops / 1e12:.0f} TFLOP/s bf16 peak), MFU {mfu:.2f} (--mfu), "
            f"{HEADROOM:.0%} of GPU memory usable, activations measured in bf16 on the meta device")
    table = [["", *[p.phase for p in plans]]] + [[name, *[fn(p) for p in plans]]
                                                   for name, fn in ROWS]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [head, ""] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                          for row in table]
    problems = [f"{p.phase}: {msg}" for p in plans for msg in p.problems]
    return "\n".join(lines + ([""] + problems if problems else []))


def _plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE",
                        help="recipe YAML(s), one per phase; a single recipe also plans the "
                             "phases that continue it (recipes beside it whose load_path is in "
                             "its save_folder)")
    parser.add_argument("--gpus", default="8xH100",
                        help=f"COUNTxNAME (default: 8xH100); names: {', '.join(GPU_MEMORY_GIB)}")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOPs utilisation assumed for GPU-hours (default: {DEFAULT_MFU})")
    parser.add_argument("--json", metavar="OUT", help="also write the plan as JSON to OUT")
    parser.add_argument("--only", action="store_true",
                        help="plan only the recipes given, not the phases that follow them")


@command("plan", "validate recipes and estimate memory, FLOPs, steps and GPU-hours per phase",
         _plan_args)
def plan(args: argparse.Namespace) -> int:
    import logging

    logging.disable(logging.WARNING)  # the pre-flight's own log lines would interleave the table
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu {args.mfu}: must be in (0, 1]")
    gpus = parse_gpus(args.gpus)
    paths = list(args.recipes)
    if len(paths) == 1 and not args.only and Path(paths[0]).is_file():
        paths += follow_on_phases(paths[0])
    plans = [plan_phase(p, gpus, args.mfu) for p in paths]
    print(render(plans, gpus, args.mfu))
    if args.json:
        Path(args.json).write_text(json.dumps({"gpus": asdict(gpus), "mfu": args.mfu,
                                               "headroom": HEADROOM,
                                               "phases": [asdict(p) for p in plans]}, indent=2) + "\n")
    return 2 if any(m.startswith("error") for p in plans for m in p.problems) else 0
