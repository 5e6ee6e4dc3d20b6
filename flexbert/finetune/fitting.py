"""The Composer fit shared by classification and token classification: one Trainer over a train
and an eval split, quiet unless asked, and its final metrics."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable
import torch
from flexbert.config import ConfigError
from flexbert.finetune.config import FinetuneConfig


def quiet(cfg: FinetuneConfig) -> None:
    import datasets

    if not cfg.progress_bar:
        datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="Cannot split tensor of length")


def pad_id(tokenizer: Any, model: torch.nn.Module) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id


def fit_and_evaluate(cfg: FinetuneConfig, composer_model: Any, train_ds: Any, eval_ds: Any,
                     collate_fn: Callable) -> tuple[dict[str, float], dict[str, Any]]:
    """Composer Trainer over the two splits; (final eval metrics, {steps, train_loss})."""
    from composer import Evaluator, Trainer
    from composer.core import DataSpec
    from composer.loggers import InMemoryLogger
    from composer.optim import DecoupledAdamW, LinearScheduler, LinearWithWarmupScheduler
    from torch.utils.data import DataLoader

    from flexbert.runtime.device import pick_device, pick_precision

    generator = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                          collate_fn=collate_fn, generator=generator)
    eval_dl = DataLoader(eval_ds, batch_size=cfg.eval_batch_size, shuffle=False,
                         collate_fn=collate_fn)

    def spec(dl):
        return DataSpec(dl, get_num_samples_in_batch=lambda b: int(b["input_ids"].shape[0]),
                        get_num_tokens_in_batch=lambda b: int(b["attention_mask"].sum()))

    device = pick_device(cfg.device)
    duration = cfg.max_duration or epochs_to_batches(cfg.epochs, len(train_dl))
    optimizer = DecoupledAdamW(composer_model.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                               eps=1e-6, weight_decay=cfg.weight_decay)
    memory = InMemoryLogger()
    save = cfg.save_folder if (cfg.save_folder and cfg.save_checkpoints) else None
    trainer = Trainer(
        model=composer_model, train_dataloader=spec(train_dl),
        eval_dataloader=Evaluator(label="eval", dataloader=spec(eval_dl),
                                  metric_names=list(composer_model.eval_metrics)),
        max_duration=duration, eval_interval="1ep" if not cfg.max_duration else duration,
        optimizers=optimizer,
        # without warmup, the same linear decay from a scheduler that does not warn at every
        # step that its warmup is 0 (Composer's LinearWithWarmupScheduler does)
        schedulers=(LinearWithWarmupScheduler(t_warmup=f"{cfg.warmup}dur", alpha_f=0.0)
                    if cfg.warmup else LinearScheduler(alpha_i=1.0, alpha_f=0.0, t_max="1dur")),
        device=device, precision=pick_precision(cfg.precision, device), seed=cfg.seed,
        loggers=[memory], progress_bar=cfg.progress_bar, log_to_console=False,
        save_folder=save, save_interval="1ep", save_overwrite=True,
    )
    trainer.fit()
    trainer.eval()  # the final weights, whatever the eval interval
    # Composer evaluates with its own copies of the metrics, kept on the state per evaluator.
    values = {name.lower(): float(m.compute()) for name, m in trainer.state.eval_metrics["eval"].items()}
    trainer.close()
    train_loss = memory.most_recent_values.get("loss/train/total")
    return values, {"steps": int(trainer.state.timestamp.batch),
                    "train_loss": float(train_loss) if train_loss is not None else None}


def epochs_to_batches(epochs: float, batches_per_epoch: int) -> str:
    """Fractional epochs as a batch count (Composer's 'ep' unit is whole epochs)."""
    if epochs <= 0:
        raise ConfigError(f"finetune.epochs: must be > 0, got {epochs}")
    return f"{max(1, math.ceil(epochs * batches_per_epoch))}ba"
