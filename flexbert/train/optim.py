"""Optimizers by name, with ModernBERT's parameter groups (no weight decay on norms and biases).

Weight decay is *decoupled* everywhere: the step shrinks weights by `weight_decay * lr / peak_lr`,
so 1e-5 means the same thing at any learning rate (Loshchilov & Hutter; Composer's DecoupledAdamW,
optimi's `decouple_lr`).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from torch import nn

from flexbert.registry import OPTIMIZERS


@OPTIMIZERS.register("stable_adamw")
def stable_adamw(groups: list[dict], lr: float, betas: Iterable[float], eps: float,
                 weight_decay: float, **extra: Any) -> torch.optim.Optimizer:
    """torch-optimi StableAdamW (AdamW + per-tensor update clipping), ModernBERT's optimizer."""
    from optimi import StableAdamW

    if not torch.cuda.is_available():
        extra.setdefault("triton", False)  # optimi would pick its Triton kernel, which needs a GPU
    return StableAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                       decouple_lr=True, max_lr=lr, **extra)


@OPTIMIZERS.register("optimi_adamw")
def optimi_adamw(groups: list[dict], lr: float, betas: Iterable[float], eps: float,
                 weight_decay: float, **extra: Any) -> torch.optim.Optimizer:
    """torch-optimi AdamW with the same decoupling as stable_adamw: StableAdamW without its
    per-tensor update clipping (to measure what the clipping does)."""
    from optimi import AdamW

    if not torch.cuda.is_available():
        extra.setdefault("triton", False)
    return AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                 decouple_lr=True, max_lr=lr, **extra)


@OPTIMIZERS.register("torch_adamw")
def torch_adamw(groups: list[dict], lr: float, betas: Iterable[float], eps: float,
                weight_decay: float, **extra: Any) -> torch.optim.Optimizer:
    """torch.optim.AdamW. Its weight decay is multiplied by the LR (wd * lr per step), so 1e-5
    here is ~lr times weaker than the decoupled optimizers' 1e-5; for comparisons only."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, **extra)


@OPTIMIZERS.register("decoupled_adamw")
def decoupled_adamw(groups: list[dict], lr: float, betas: Iterable[float], eps: float,
                    weight_decay: float, **extra: Any) -> torch.optim.Optimizer:
    """Composer's AdamW with weight decay scaled by the schedule, not by the LR."""
    from composer.optim import DecoupledAdamW

    return DecoupledAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                          **extra)


def param_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool = False,
                 decay_embeddings: bool = True) -> list[dict]:
    """Split parameters into a decayed and an undecayed group.

    Norm weights and biases are the 1-D parameters; decaying them only pulls LayerNorm gains to
    zero. Embeddings (and the decoder tied to them) are decayed unless `decay_embeddings` is off.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        skip = (param.ndim < 2 and not decay_norms_and_biases) or (
            id(param) in embedding_ids and not decay_embeddings)
        (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """`cfg` is an OptimizerConfig; `cfg.name` is resolved in the OPTIMIZERS registry."""
    factory = OPTIMIZERS.get(cfg.name, "optimizer.name")
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norms_and_biases,
                          cfg.decay_embeddings)
    extra = dict(cfg.extra or {})
    return factory(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                   weight_decay=cfg.weight_decay, **extra)


class ApplyOptimizerConfig(Callback):
    """Make the recipe, not the checkpoint, decide LR and weight decay.

    Loading a checkpoint restores the optimizer's param groups (lr, weight_decay, optimi's
    max_lr, the scheduler's base LRs) from the previous run, so a new phase that lowers the LR
    would silently keep the old one. At FIT_START (after any load) the configured values are
    written back; for a plain resume they are the same values, so nothing changes.
    """

    def __init__(self, lr: float, weight_decays: list[float]):
        self.lr = lr
        self.weight_decays = weight_decays

    def fit_start(self, state: State, logger: Logger) -> None:
        for optimizer in state.optimizers:
            for group, weight_decay in zip(optimizer.param_groups, self.weight_decays):
                group["weight_decay"] = weight_decay
                loaded = group.get("initial_lr") or self.lr
                group["lr"] *= self.lr / loaded  # keeps the schedule's multiplier (no-op on resume)
                group["initial_lr"] = self.lr
                if group.get("max_lr") is not None:
                    group["max_lr"] = self.lr
        for scheduler in state.schedulers:
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [self.lr] * len(scheduler.base_lrs)
