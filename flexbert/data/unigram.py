"""What a model that ignores context scores: the unigram baseline of a data_prep split.

A masked-LM that has learnt nothing about context can still predict every masked token from the
token frequencies alone; its loss is then the entropy of those frequencies. The summary prints the
eval loss beside this number so a run that has "learnt" only the unigram plateau shows as such.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import numpy as np


def read_split(local: str | os.PathLike, split: str) -> Optional[list[np.ndarray]]:
    """Every document's token ids of `local/split` (a data_prep output), in shard order; None when
    the split is not a local MDS folder of token ids. Compressed shards are decompressed into a
    temporary folder, so nothing is written beside the user's shards."""
    from streaming import LocalDataset
    from streaming.base.compression import decompress

    src = Path(local) / split
    if not (src / "index.json").is_file():
        return None
    index = json.loads((src / "index.json").read_text())
    if any("input_ids" not in shard.get("column_names", []) for shard in index["shards"]):
        return None
    with tempfile.TemporaryDirectory(prefix="flexbert-split-") as tmp:
        dst = Path(tmp) / split
        dst.mkdir()
        shutil.copy(src / "index.json", dst / "index.json")
        for shard in index["shards"]:
            raw = shard["raw_data"]["basename"]
            if (src / raw).is_file():
                shutil.copy(src / raw, dst / raw)
            else:
                packed = (src / shard["zip_data"]["basename"]).read_bytes()
                (dst / raw).write_bytes(decompress(shard["compression"], packed))
        ds = LocalDataset(tmp, split)
        return [np.asarray(ds[i]["input_ids"], dtype=np.int64) for i in range(len(ds))]


def token_frequencies(docs: Iterable[np.ndarray], special_ids: Iterable[int] = ()) -> Counter:
    """How often each token occurs, special tokens (never masked, never predicted) left out."""
    counts: Counter = Counter()
    for doc in docs:
        counts.update(np.asarray(doc).tolist())
    for special in special_ids:
        counts.pop(int(special), None)
    return counts


def unigram_entropy(counts: Counter) -> float:
    """Entropy (nats) of the empirical distribution: the loss of the best context-free predictor
    of these very tokens, a lower bound for any unigram model fitted elsewhere."""
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    return -sum(c / total * math.log(c / total) for c in counts.values() if c)


def unigram_cross_entropy(train: Counter, target: Counter, vocab_size: int) -> float:
    """Loss (nats) on `target` tokens of the add-one smoothed unigram model of `train` tokens."""
    total = sum(train.values()) + vocab_size
    n = sum(target.values())
    return -sum(c * math.log((train.get(t, 0) + 1) / total) for t, c in target.items()) / max(n, 1)


def split_unigram_entropy(local: str | os.PathLike, split: str = "val",
                          special_ids: Iterable[int] = ()) -> Optional[float]:
    docs = read_split(local, split)
    return None if docs is None else unigram_entropy(token_frequencies(docs, special_ids))
