"""Pre-flight checks: every recipe value, the prepared data and the tokenizer against the model,
checked before anything is built, so a bad run fails in a second with `FILE: KEY: what` instead
of a traceback minutes (or GPU-hours) later.

`check_values` needs only the recipe (load_recipe calls it); `check_data` looks at the disk and
the tokenizer (train.py and `flexbert plan` call it; loading a recipe for other tools does not).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from flexbert.config import ConfigError

PRECISIONS = ("fp32", "amp_fp16", "amp_bf16", "amp_fp8")
PREPARE_HINT = ("prepare data first: `python -m data_prep sample --out runs/sample` (the CPU "
                "sample) or `python -m data_prep mds SOURCES --tokenizer T --out DIR`")
SAMPLE_VOCAB = 4096  # data_prep sample's tokenizer: only a model this small can train on it


def prepare_hint(recipe: Any, local: str) -> str:
    """What to run: the CPU sample only for a model its 4096-token tokenizer fits (tiny);
    a base or large recipe needs a corpus prepared with its own tokenizer."""
    if recipe.model.vocab_size <= SAMPLE_VOCAB:
        return (f"prepare data first: `python -m data_prep sample --out {local}` (the CPU sample) "
                f"or `python -m data_prep mds SOURCES --tokenizer T --out {local}`")
    return (f"prepare data first: `python -m data_prep mds SOURCES --tokenizer T --out {local}` "
            f"(a {recipe.model.vocab_size}-token model: the 4096-token CPU sample does not fit it)")


def _fail(source: str, key: str, message: str) -> None:
    raise ConfigError(f"{source}: {key}: {message}")


def _number(source: str, key: str, value: Any, low: float, high: float = math.inf,
            low_open: bool = False) -> None:
    """A finite number in [low, high) (or (low, high) when low_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value < high
    if not ok:
        left = "(" if low_open else "["
        _fail(source, key, f"{value!r} must be a number in {left}{low}, {high})")


def check_values(cfg: Any, source: str) -> None:
    """Every scalar of the recipe that Composer, torch or the loader would otherwise trip over."""
    _check_trainer(cfg.trainer, source)
    _check_optimizer(cfg.optimizer, source)
    _check_batch(cfg.batch, source)
    _check_times(cfg, source)


def _check_trainer(tcfg: Any, source: str) -> None:
    if tcfg.precision not in PRECISIONS:
        _fail(source, "trainer.precision", f"{tcfg.precision!r}; allowed: {', '.join(PRECISIONS)}")
    micro = tcfg.device_train_microbatch_size
    if micro is None or micro == "auto":
        return
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
        _fail(source, "trainer.device_train_microbatch_size",
              f"{micro!r} must be an integer >= 1, 'auto' or null (the whole per-rank batch)")


def _check_optimizer(opt: Any, source: str) -> None:
    _number(source, "optimizer.lr", opt.lr, 0.0, low_open=True)
    if len(opt.betas) != 2:
        _fail(source, "optimizer.betas", f"needs two values in [0, 1), got {list(opt.betas)}")
    for i, beta in enumerate(opt.betas):
        _number(source, f"optimizer.betas[{i}]", beta, 0.0, 1.0)
    _number(source, "optimizer.eps", opt.eps, 0.0, low_open=True)
    _number(source, "optimizer.weight_decay", opt.weight_decay, 0.0)


def _check_batch(batch: Any, source: str) -> None:
    rows = batch.global_train_batch_size
    if rows < 1:
        _fail(source, "batch.global_train_batch_size", f"{rows} must be >= 1 (rows per step, all ranks)")
    if batch.global_eval_batch_size is not None and batch.global_eval_batch_size < 1:
        _fail(source, "batch.global_eval_batch_size",
              f"{batch.global_eval_batch_size} must be >= 1 (or null: the train size)")
    if batch.warmup_start is not None and not 1 <= batch.warmup_start <= rows:
        _fail(source, "batch.warmup_start",
              f"{batch.warmup_start} must be in [1, batch.global_train_batch_size={rows}]")
    if batch.warmup_tokens < 0:
        _fail(source, "batch.warmup_tokens", f"{batch.warmup_tokens} must be >= 0")


def _check_times(cfg: Any, source: str) -> None:
    """Durations must be positive. save_interval=0 is refused rather than guessed at: Composer
    would save nothing, not even the last step; every positive interval also saves the last step."""
    from composer.core import Time

    for key in ("max_duration", "save_interval", "eval_interval"):
        value = str(getattr(cfg, key))
        try:
            time = Time.from_timestring(value)
        except ValueError:
            _fail(source, key, f"{value!r} is not a time string such as '20ba', '1000000tok' or '1ep'")
        if time.value <= 0:
            hint = (" (the last step is always saved; to save only at the end set save_interval "
                    "to max_duration)") if key == "save_interval" else ""
            _fail(source, key, f"{value!r} must be > 0{hint}")


# --- data and tokenizer ----------------------------------------------------------------------

def stream_dirs(recipe: Any) -> list[tuple[str, str]]:
    """(recipe key, local folder) of every stream read from local disk only; the default stream
    is `data_dir` itself, so its errors name that key."""
    out = []
    for name, s in recipe.data.streams.items():
        if not s.remote:
            out.append(("data_dir" if s.local == recipe.cfg.data_dir else
                        f"data.streams.{name}.local", s.local))
    return out


def _split_samples(folder: Path, split: str) -> Optional[int]:
    """Samples in an MDS split folder, or None when the split has no index."""
    index = folder / split / "index.json"
    if not index.is_file():
        return None
    try:
        shards = json.loads(index.read_text())["shards"]
        return sum(int(s["samples"]) for s in shards)
    except (ValueError, KeyError, TypeError):
        return 0


def check_data_dirs(recipe: Any) -> None:
    """Each local stream holds a prepared train split; the error says which key and what to run."""
    for key, local in stream_dirs(recipe):
        path = Path(local)
        if not path.exists():
            _fail(recipe.source, key, f"{local} does not exist; {prepare_hint(recipe, local)}")
        if not _split_samples(path, "train"):
            _fail(recipe.source, key, f"{local} holds no prepared data ({path / 'train' / 'index.json'} "
                  f"missing or empty); {prepare_hint(recipe, local)}")


def has_val_split(recipe: Any) -> bool:
    """Whether every local stream has a non-empty val split (`--val-fraction 0` writes none)."""
    return all(_split_samples(Path(local), "val") for _, local in stream_dirs(recipe))


def evaluates(recipe: Any) -> bool:
    """Evaluate only when there is a val split; data prepared with `--val-fraction 0` has none,
    and the run trains without evaluation (said once in the log) instead of crashing."""
    if has_val_split(recipe):
        return True
    logging.getLogger("flexbert.train").warning(
        "%s has no val split (prepared with --val-fraction 0?): training without evaluation",
        ", ".join(local for _, local in stream_dirs(recipe)))
    return False


def tokenizer_dir(recipe: Any) -> tuple[str, str]:
    """(recipe key, tokenizer path or Hub name) that the loader will use."""
    data = recipe.data
    if data.tokenizer:
        return "data.tokenizer", data.tokenizer
    first = next(iter(data.streams.values()))
    return "data.tokenizer", str(Path(first.local) / "tokenizer")


def load_tokenizer_ids(recipe: Any) -> dict:
    """The special ids of the recipe's tokenizer (data_prep's loader: local folder or Hub name)."""
    from data_prep import DataPrepError
    from data_prep.tokenizer import load_tokenizer, special_ids

    key, path = tokenizer_dir(recipe)
    if not recipe.data.tokenizer and not Path(path).is_dir():
        _fail(recipe.source, key, f"not set and {path} does not exist (data_prep writes the "
              "tokenizer beside the shards; set data.tokenizer to use another)")
    try:
        return special_ids(load_tokenizer(path))
    except DataPrepError as err:
        _fail(recipe.source, key, str(err))
    raise AssertionError("unreachable")


def check_tokenizer(recipe: Any, ids: dict) -> None:
    """The model's embedding table covers the tokenizer, and the ids it exports agree."""
    model, source = recipe.model, recipe.source
    where = tokenizer_dir(recipe)[1]
    if ids["vocab_size"] > model.vocab_size:
        _fail(source, "model.vocab_size", f"{model.vocab_size} is smaller than the tokenizer's "
              f"{ids['vocab_size']} tokens ({where}); ids past the table would fail mid-run")
    for role in ("pad", "mask", "cls", "sep"):
        want = ids.get(role)
        have = getattr(model, f"{role}_token_id")
        if want is not None and want != have:
            _fail(source, f"model.{role}_token_id", f"{have}, but the tokenizer {where} has "
                  f"{role} = {want}; set model.{role}_token_id={want}")


def check_positions(recipe: Any) -> None:
    """Learned absolute positions stop at max_position_embeddings; packed rows reach max_seq_len."""
    model, seq_len = recipe.model, recipe.data.max_seq_len
    if model.position.type == "absolute" and model.max_position_embeddings < seq_len:
        _fail(recipe.source, "model.max_position_embeddings",
              f"{model.max_position_embeddings} absolute positions but data.max_seq_len is "
              f"{seq_len}; raise it to at least {seq_len}")


def check_data(recipe: Any) -> None:
    """Everything that needs the disk: data prepared, tokenizer present and matching the model."""
    check_data_dirs(recipe)
    check_tokenizer(recipe, load_tokenizer_ids(recipe))
