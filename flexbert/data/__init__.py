"""Pretraining data: streams and mixtures -> best-fit packing -> MLM masking -> resumable batches."""

from flexbert.data.config import DataConfig, StreamConfig, as_data_config, validate_data_config
from flexbert.data.dataset import PackedMLMDataset
from flexbert.data.loader import (PackedDataLoader, build_data_spec, build_pretraining_dataloader,
                                  special_token_ids)
from flexbert.data.masking import IGNORE_INDEX, Masker
from flexbert.data.packing import (best_fit, collate_rows, cu_seqlens_from_positions, num_samples, num_tokens,
                                   packing_efficiency, split_packed_batch, token_indices, unpad_batch)
from flexbert.data.schedule import RowSchedule

__all__ = [
    "DataConfig", "StreamConfig", "as_data_config", "validate_data_config", "PackedMLMDataset",
    "PackedDataLoader", "build_pretraining_dataloader", "build_data_spec", "special_token_ids",
    "IGNORE_INDEX", "Masker", "best_fit", "collate_rows", "cu_seqlens_from_positions", "num_samples",
    "num_tokens", "packing_efficiency", "split_packed_batch", "token_indices", "unpad_batch", "RowSchedule",
]
