"""The pretraining DataLoader: a torch DataLoader (so composer finds and checkpoints its dataset)
that strips the per-batch progress record and keeps it for `state_dict()`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from torch.utils.data import DataLoader

from flexbert.data.config import DataConfig, as_data_config, validate_data_config
from flexbert.data.dataset import META_KEY, PackedMLMDataset
from flexbert.data.documents import run_encoder
from flexbert.data.packing import num_samples, split_packed_batch, token_counts
from flexbert.data.streams import build_streaming_dataset


def _identity(batch):
    """Workers already yield whole batches."""
    return batch


class PackedDataLoader(DataLoader):
    """Iterating continues where the last iteration (or `load_state_dict`) left off (train split)."""

    def __init__(self, dataset: PackedMLMDataset, num_workers: int, prefetch_factor: int = 2,
                 pin_memory: bool = False):
        super().__init__(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                         pin_memory=pin_memory, persistent_workers=False,
                         prefetch_factor=prefetch_factor if num_workers else None)

    def __iter__(self):
        self.dataset.begin_iteration()
        for batch in super().__iter__():
            self.dataset.observe(batch.pop(META_KEY))
            yield batch

    def state_dict(self) -> dict:
        """Exact position: batches handed out so far and each packing partition's cursor."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


def special_token_ids(tokenizer: Any) -> dict:
    """Special ids from a tokenizer directory / Hub name, a tokenizer object, or a ready dict."""
    return run_tokenizer(tokenizer)[0]


def run_tokenizer(tokenizer: Any) -> tuple[dict, Any]:
    """(special ids, the fast encoder that text streams are tokenized with, or None)."""
    if isinstance(tokenizer, dict):
        missing = {"pad", "mask", "vocab_size", "all_special"} - set(tokenizer)
        if missing:
            raise ValueError(f"special token ids: missing {sorted(missing)}")
        return tokenizer, None
    from data_prep import DataPrepError
    from data_prep.tokenizer import check_special_tokens, load_tokenizer, special_ids

    try:
        tok = load_tokenizer(str(tokenizer)) if isinstance(tokenizer, (str, Path)) else tokenizer
        check_special_tokens(tok, str(tokenizer))
    except DataPrepError as exc:
        raise ValueError(str(exc)) from exc
    return special_ids(tok), run_encoder(tok)


def default_tokenizer_dir(cfg: DataConfig) -> str:
    """`data.tokenizer`, else the copy data_prep wrote beside the first stream's shards."""
    if cfg.tokenizer:
        return cfg.tokenizer
    first = next(iter(cfg.streams.values()))
    path = Path(first.local) / "tokenizer"
    if not path.exists():
        raise ValueError(f"data.tokenizer: not set and {path} does not exist")
    return str(path)


def _world(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    """Rank and world size: explicit, else torch.distributed, else the launcher's env vars."""
    import torch.distributed as dist

    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def build_pretraining_dataloader(cfg: Union[DataConfig, dict, Any], tokenizer: Any = None,
                                 device_batch_size: int = 8, split: str = "train", *,
                                 rank: Optional[int] = None, world_size: Optional[int] = None,
                                 num_workers: Optional[int] = None) -> PackedDataLoader:
    """Packed, masked MLM batches of `device_batch_size` rows x `max_seq_len` for this rank.

    The train split cycles epochs forever (size the run in tokens or batches); val is one pass.
    """
    cfg = as_data_config(cfg)
    if split not in ("train", "val"):
        raise ValueError(f"split: {split!r} must be 'train' or 'val'")
    if device_batch_size < 1:
        raise ValueError(f"device_batch_size: {device_batch_size} must be >= 1")
    workers = cfg.num_workers if num_workers is None else num_workers
    if workers != cfg.num_workers:
        cfg.num_workers = workers
    validate_data_config(cfg, device_batch_size=device_batch_size)
    special, encoder = run_tokenizer(tokenizer if tokenizer is not None else default_tokenizer_dir(cfg))
    rank, world_size = _world(rank, world_size)
    ds = PackedMLMDataset(cfg, build_streaming_dataset(cfg, split), special, device_batch_size,
                          split, rank, world_size, encoder)
    return PackedDataLoader(ds, workers, cfg.prefetch_factor, cfg.pin_memory)


def build_data_spec(loader: PackedDataLoader):
    """The Composer DataSpec the trainer uses: row-wise splitting that recomputes cu_seqlens,
    real-token and masked-token counts (flexbert.data.packing.token_counts)."""
    from composer.core import DataSpec

    return DataSpec(loader, split_batch=split_packed_batch, get_num_tokens_in_batch=token_counts,
                    get_num_samples_in_batch=num_samples)
