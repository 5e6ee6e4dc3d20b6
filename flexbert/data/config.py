"""Typed data configuration (OmegaConf structured dataclasses) and its cross-field validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from flexbert.data.documents import FRAMED, normalise_framed


@dataclass
class StreamConfig:
    """One MDS source; `local` is a `data_prep` output dir (or an MDS dir when `split` names none).

    `split` defaults to the loader's split ("train" / "val"), so one stream entry serves both.
    At most one of proportion / repeat / choose, as in MosaicML Streaming. Samples carry token ids
    (`input_ids`: any integer ndarray, or raw int64 bytes) or `text` (tokenized in the loader).
    `framed`: whether documents already start with [CLS] and end with [SEP]; `auto` adds what a
    document lacks, `false` always adds both, `true` adds nothing.
    """

    local: str = ""
    remote: Optional[str] = None
    split: Optional[str] = None
    proportion: Optional[float] = None
    repeat: Optional[float] = None
    choose: Optional[int] = None
    framed: str = "auto"


@dataclass
class DataConfig:
    """Streams, packing, masking, workers, batch-size warmup for pretraining."""

    streams: Dict[str, StreamConfig] = field(default_factory=dict)
    tokenizer: Optional[str] = None  # default: <first stream local>/tokenizer (data_prep copies it there)
    max_seq_len: int = 1024
    mlm_probability: float = 0.3
    eval_mlm_probability: float = 0.15
    mask_replace_fraction: float = 0.8  # of masked positions: [MASK]
    random_replace_fraction: float = 0.1  # of masked positions: random non-special token
    num_workers: int = 2
    shuffle: bool = True
    seed: int = 17
    pack_parts: int = 4  # packing partitions per rank; num_workers must divide it (0 counts as 1)
    pack_buffer_factor: float = 2.0  # documents held for best fit, in multiples of one batch's tokens
    pack_max_wait: int = 3  # batches a leftover document may wait before it is placed first
    # Best fit takes the longest waiting piece first (tightest packing), or pieces in a "random"
    # order: with a buffer of many batches that spreads a document's pieces over many batches,
    # which small batches learn from better (configs/tiny.yaml, bench/quality.py).
    pack_order: str = "longest"
    batch_warmup_min_rows: Optional[int] = None  # per-device rows at step 0; None = no warmup
    batch_warmup_tokens: int = 0  # global tokens over which rows grow to the device batch size
    num_canonical_nodes: int = 1
    shuffle_algo: str = "py1e"
    shuffle_block_size: int = 1 << 18
    cache_limit: Optional[str] = None
    cache_dir: Optional[str] = None  # decompressed local shards; default <system temp>/flexbert-shards-<uid>
    download_timeout: float = 60.0
    verify_shards: bool = True  # check shard file sizes against the index when the loader is built
    verify_hashes: bool = False  # also check xxh64 of local shards (reads every shard once)
    prefetch_factor: int = 2
    pin_memory: bool = False


def _fail(path: str, msg: str) -> None:
    raise ValueError(f"{path}: {msg}")


def validate_stream(s: StreamConfig, path: str) -> None:
    """Per-stream rules, with the YAML path of the offending field in the message."""
    if not s.local and not s.remote:
        _fail(f"{path}.local", "a stream needs `local` (or `remote`)")
    given = [k for k in ("proportion", "repeat", "choose") if getattr(s, k) is not None]
    if len(given) > 1:
        _fail(f"{path}.{given[1]}", f"set at most one of proportion / repeat / choose (got {', '.join(given)})")
    if s.proportion is not None and not s.proportion > 0:
        _fail(f"{path}.proportion", f"{s.proportion} must be > 0")
    if s.repeat is not None and not s.repeat > 0:
        _fail(f"{path}.repeat", f"{s.repeat} must be > 0")
    if s.choose is not None and s.choose < 1:
        _fail(f"{path}.choose", f"{s.choose} must be >= 1")
    if normalise_framed(s.framed) not in FRAMED:
        _fail(f"{path}.framed", f"{s.framed!r} must be one of {', '.join(FRAMED)}")


def _validate_streams(cfg: DataConfig, path: str) -> None:
    """Streaming requires proportions on all streams or on none."""
    if not cfg.streams:
        _fail(f"{path}.streams", "at least one stream is required")
    for name, s in cfg.streams.items():
        validate_stream(s, f"{path}.streams.{name}")
    with_prop = [n for n, s in cfg.streams.items() if s.proportion is not None]
    if with_prop and len(with_prop) != len(cfg.streams):
        missing = next(n for n in cfg.streams if n not in with_prop)
        _fail(f"{path}.streams.{missing}.proportion", "missing: give a proportion to every stream or to none")


def _validate_numbers(cfg: DataConfig, path: str) -> None:
    """Ranges of the scalar knobs."""
    if cfg.max_seq_len < 8:
        _fail(f"{path}.max_seq_len", f"{cfg.max_seq_len} must be >= 8")
    for key in ("mlm_probability", "eval_mlm_probability"):
        if not 0.0 < getattr(cfg, key) < 1.0:
            _fail(f"{path}.{key}", f"{getattr(cfg, key)} must be in (0, 1)")
    if min(cfg.mask_replace_fraction, cfg.random_replace_fraction) < 0 or \
            cfg.mask_replace_fraction + cfg.random_replace_fraction > 1.0:
        _fail(f"{path}.random_replace_fraction", "mask_replace_fraction + random_replace_fraction must be in [0, 1]")
    if cfg.num_workers < 0:
        _fail(f"{path}.num_workers", f"{cfg.num_workers} must be >= 0")
    if cfg.pack_parts < 1 or cfg.pack_parts % max(cfg.num_workers, 1):
        _fail(f"{path}.pack_parts", f"{cfg.pack_parts} must be >= 1 and divisible by num_workers ({cfg.num_workers})")
    if cfg.pack_order not in ("longest", "random"):
        _fail(f"{path}.pack_order", f"{cfg.pack_order!r} must be 'longest' or 'random'")
    if cfg.pack_buffer_factor < 1.0:
        _fail(f"{path}.pack_buffer_factor", f"{cfg.pack_buffer_factor} must be >= 1")
    if cfg.shuffle_algo not in ("py1e", "py1br", "py1b", "py1s", "py2s", "naive"):
        _fail(f"{path}.shuffle_algo", f"{cfg.shuffle_algo!r} is not a Streaming shuffle algorithm")


def _validate_warmup(cfg: DataConfig, path: str, device_batch_size: Optional[int]) -> None:
    """Warmup needs a positive minimum no larger than the device batch."""
    if cfg.batch_warmup_tokens < 0:
        _fail(f"{path}.batch_warmup_tokens", f"{cfg.batch_warmup_tokens} must be >= 0")
    m = cfg.batch_warmup_min_rows
    if m is None:
        return
    if m < 1:
        _fail(f"{path}.batch_warmup_min_rows", f"{m} must be >= 1")
    if device_batch_size is not None and m > device_batch_size:
        _fail(f"{path}.batch_warmup_min_rows", f"{m} exceeds the device batch size {device_batch_size}")


def validate_data_config(cfg: DataConfig, path: str = "data", device_batch_size: Optional[int] = None) -> DataConfig:
    """All cross-field rules in one place; raises ValueError naming the config path."""
    _validate_streams(cfg, path)
    _validate_numbers(cfg, path)
    _validate_warmup(cfg, path, device_batch_size)
    return cfg


def as_data_config(obj: Any, path: str = "data") -> DataConfig:
    """Accept a DataConfig, an OmegaConf node or a plain dict; unknown keys fail via OmegaConf."""
    if isinstance(obj, DataConfig):
        return obj
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), obj)
    return OmegaConf.to_object(merged)
