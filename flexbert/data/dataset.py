"""Packed, masked MLM batches from a StreamingDataset, with exact, cheap resumption.

Each rank's share of an epoch is cut into `pack_parts` contiguous partitions. Partition v packs
the batches with global index k % pack_parts == v, so the batch sequence depends only on the seed,
the rank count and pack_parts, never on the number of DataLoader workers. A partition's state is
(epoch, cursor into its slice, leftover document pieces by sample id + offsets): resuming fetches
only those few leftovers and continues, without re-reading or re-packing consumed documents.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flexbert.data.config import DataConfig
from flexbert.data.elastic import fresh_part, resplit
from flexbert.data.masking import Masker
from flexbert.data.packing import best_fit, collate_rows, token_indices
from flexbert.data.schedule import RowSchedule
from flexbert.data.documents import Documents
from flexbert.data.streams import epoch_order, stream_formats

META_KEY = "_flexbert_state"
# RNG streams keyed (seed, rank, batch, stream): masking uses 0 (train) and 1 (val), packing order 2.
PACK_STREAM = 2
STATE_VERSION = 1


def read_tokens(docs: Documents, sample_id: int) -> np.ndarray:
    """One document's framed token ids (a module-level seam: tests count the reads)."""
    return docs.read(sample_id)


class _Orders:
    """Per-process cache of epoch orders (computing one is O(epoch size))."""

    def __init__(self, ds):
        self.ds = ds
        self.cache: dict[int, np.ndarray] = {}

    def get(self, epoch: int) -> np.ndarray:
        if epoch not in self.cache:
            if len(self.cache) > 2:
                self.cache.pop(min(self.cache))
            self.cache[epoch] = epoch_order(self.ds, epoch)
        return self.cache[epoch]


class Partition:
    """One packing partition: its slice of each epoch, a cursor, and leftover pieces."""

    def __init__(self, docs: Documents, orders: _Orders, index: int, total: int, row_len: int, infinite: bool,
                 state: Optional[dict] = None, longest_first: bool = True):
        self.docs, self.orders, self.index, self.total = docs, orders, index, total
        self.row_len, self.infinite, self.longest_first = row_len, infinite, longest_first
        state = state or fresh_part()
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.pending = [list(map(int, p)) for p in state["pending"]]  # [sample id, start, stop, age]
        # [epoch, lo, hi) positions of an epoch's order to read before this partition's own slice
        # (set when a resume re-split the data over a new rank count; see elastic.py)
        self.carry = [list(map(int, c)) for c in state.get("carry", [])]
        self.tokens = self._refetch(self.pending)
        self.exhausted = False

    def _refetch(self, pending: list) -> list[np.ndarray]:
        """Leftover pieces are stored as references; read each referenced document once."""
        docs: dict[int, np.ndarray] = {}
        out = []
        for sid, a, b, _ in pending:
            if sid not in docs:
                docs[sid] = read_tokens(self.docs, sid)
            out.append(docs[sid][a:b])
        return out

    def _slice(self) -> np.ndarray:
        order = self.orders.get(self.epoch)
        n = len(order)
        return order[self.index * n // self.total:(self.index + 1) * n // self.total]

    def _next_sid(self) -> Optional[tuple[int, int]]:
        """(epoch, sample id) of the next document: carried ranges first, then the own slice."""
        while self.carry:
            e, lo, hi = self.carry[0]
            if lo < hi:
                self.carry[0][1] += 1
                return e, int(self.orders.get(e)[lo])
            self.carry.pop(0)
        ids = self._slice()
        if self.cursor >= len(ids):
            if not self.infinite or len(ids) == 0:
                if self.infinite:
                    raise ValueError(f"packing partition {self.index} of {self.total} got no samples: "
                                     f"the dataset is too small; lower data.pack_parts")
                return None
            self.epoch, self.cursor = self.epoch + 1, 0
            ids = self._slice()
        self.cursor += 1
        return self.epoch, int(ids[self.cursor - 1])

    def _read_one(self) -> bool:
        """Append the next document (cut into <= row_len pieces); roll epochs when infinite."""
        nxt = self._next_sid()
        if nxt is None:
            return False
        sid = nxt[1]
        doc = read_tokens(self.docs, sid)
        for a in range(0, len(doc), self.row_len):
            b = min(a + self.row_len, len(doc))
            self.pending.append([sid, a, b, 0])
            self.tokens.append(doc[a:b])
        return True

    def _fill(self, target: int) -> None:
        have = sum(b - a for _, a, b, _ in self.pending)
        while have < target:
            n = len(self.pending)
            if not self._read_one():
                self.exhausted = True
                return
            have += sum(b - a for _, a, b, _ in self.pending[n:])

    def next_rows(self, n_rows: int, buffer_factor: float, max_wait: int,
                  rng: np.random.Generator) -> Optional[list]:
        """Best-fit `n_rows` rows from the buffer; None once a finite partition is used up.

        Pieces go longest first, or (pack_order=random) in an order drawn from `rng`, so that
        with a large buffer a document's pieces are spread over many batches (see DataConfig)."""
        self._fill(int(buffer_factor * n_rows * self.row_len))
        if not self.pending:
            return None
        lengths = [b - a for _, a, b, _ in self.pending]
        aged = [p[3] >= max_wait for p in self.pending]
        where, _ = best_fit(lengths, aged, n_rows, self.row_len, rng.random(len(lengths)),
                            self.longest_first)
        rows: list[list[np.ndarray]] = [[] for _ in range(n_rows)]
        keep_p, keep_t = [], []
        for i, r in enumerate(where):
            if r >= 0:
                rows[r].append(self.tokens[i])
            else:
                keep_p.append(self.pending[i][:3] + [self.pending[i][3] + 1])
                keep_t.append(self.tokens[i])
        self.pending, self.tokens = keep_p, keep_t
        return [r for r in rows if r]

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "pending": [list(p) for p in self.pending],
                "carry": [list(c) for c in self.carry if c[1] < c[2]]}


class PackedMLMDataset(IterableDataset):
    """Yields whole packed, masked batches (dicts of tensors); the loader strips META_KEY."""

    def __init__(self, cfg: DataConfig, streaming_ds, special: dict, device_batch_size: int,
                 split: str, rank: int, world_size: int, encoder=None):
        super().__init__()
        self.cfg, self.ds, self.special = cfg, streaming_ds, special
        self.docs = Documents(streaming_ds, stream_formats(streaming_ds, cfg, split), special, encoder)
        self.split, self.rank, self.world_size = split, rank, world_size
        self.device_batch_size = device_batch_size
        self.max_seq_len = cfg.max_seq_len
        self.infinite = split == "train"
        self.prob = cfg.mlm_probability if split == "train" else cfg.eval_mlm_probability
        self.schedule = RowSchedule(device_batch_size, cfg.max_seq_len, world_size,
                                    cfg.batch_warmup_min_rows if split == "train" else None,
                                    cfg.batch_warmup_tokens)
        self.masker = Masker(special["vocab_size"], special["all_special"], special["mask"],
                             cfg.mask_replace_fraction, cfg.random_replace_fraction)
        self.progress = {"next_batch": 0, "parts": {}}
        self._start = copy.deepcopy(self.progress)

    # --- iteration (runs in DataLoader workers) ---------------------------------------------

    def begin_iteration(self) -> None:
        """Freeze where the next iteration starts: train continues, val always starts over."""
        if not self.infinite:
            self.progress = {"next_batch": 0, "parts": {}}
        self._start = copy.deepcopy(self.progress)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        start = self._start
        orders = _Orders(self.ds)
        parts: dict[int, Partition] = {}
        n_parts = self.cfg.pack_parts
        k = start["next_batch"] + worker
        done: set[int] = set()
        while len(done) < n_parts // workers:
            v = k % n_parts
            if v not in parts:
                parts[v] = Partition(self.docs, orders, self.rank * n_parts + v, self.world_size * n_parts,
                                     self.max_seq_len, self.infinite, start["parts"].get(v),
                                     self.cfg.pack_order == "longest")
            if v not in done:
                rng = np.random.default_rng([self.cfg.seed, self.rank, k, PACK_STREAM])
                rows = parts[v].next_rows(self.schedule.rows(k), self.cfg.pack_buffer_factor,
                                          self.cfg.pack_max_wait, rng)
                if rows is None:
                    done.add(v)
                else:
                    yield self._batch(rows, k, v, parts[v].state())
            k += workers

    def _batch(self, rows: list, k: int, part: int, state: dict) -> dict:
        """Collate, mask with an RNG keyed on (seed, rank, step), convert to tensors."""
        b = collate_rows(rows, self.max_seq_len, self.special["pad"])
        rng = np.random.default_rng([self.cfg.seed, self.rank, k, int(self.split != "train")])
        b["input_ids"], b["labels"] = self.masker(b["input_ids"], b["attention_mask"], self.prob, rng)
        out = {key: torch.from_numpy(val) for key, val in b.items() if isinstance(val, np.ndarray)}
        out["max_seqlen"] = b["max_seqlen"]
        out.update(token_indices(out["attention_mask"], out["labels"]))
        out[META_KEY] = {"k": k, "part": part, "state": state}
        return out

    # --- progress and checkpoint state (main process) ----------------------------------------

    def observe(self, meta: dict) -> None:
        """Record the state after a batch the loader handed out."""
        self.progress["parts"][meta["part"]] = meta["state"]
        self.progress["next_batch"] = meta["k"] + 1

    def _header(self) -> dict:
        return {"version": STATE_VERSION, "split": self.split, "seed": self.cfg.seed,
                "world_size": self.world_size, "pack_parts": self.cfg.pack_parts,
                "max_seq_len": self.max_seq_len, "device_batch_size": self.device_batch_size}

    def state_dict(self, num_samples: Optional[int] = None, from_beginning: bool = True) -> dict:
        """Composer's hook (its arguments are not needed: the loader tracks exact progress).

        Ranks differ, and composer keeps rank 0's copy, so every rank's progress is gathered.
        """
        mine = copy.deepcopy(self.progress)
        state = self._header()
        state["ranks"] = _all_gather(mine, self.rank, self.world_size)
        state["tokens_seen_slots"] = self.schedule.tokens_before(mine["next_batch"]) \
            if self.schedule.warmup_tokens else None
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration starts with exactly the batch after the saved one."""
        if state is None:
            return
        header = self._header()
        for key in ("version", "split", "seed", "max_seq_len"):
            if state.get(key) != header[key]:
                raise ValueError(f"data loader state: {key}={state.get(key)!r} in the checkpoint but "
                                 f"{header[key]!r} now; exact resumption needs the same value")
        if (state["world_size"], state["pack_parts"]) == (self.world_size, self.cfg.pack_parts):
            mine = state["ranks"][self.rank]
        else:  # a different rank count: the rest of the epoch is dealt to the new ranks
            mine = resplit(state, self.world_size, self.cfg.pack_parts, lambda e: int(self.ds.epoch_size))[self.rank]
        self.progress = {"next_batch": int(mine["next_batch"]),
                         "parts": {int(v): s for v, s in mine["parts"].items()}}
        self._start = copy.deepcopy(self.progress)
        if state.get("tokens_seen_slots") is not None and self.schedule.warmup_tokens:
            # the warmup continues from the global tokens already served, whatever the old rank count
            self.schedule.resume_at(self.progress["next_batch"], int(state["tokens_seen_slots"]))


def _all_gather(obj: Any, rank: int, world_size: int) -> list:
    """Every rank's progress; without a process group (one process simulating a rank) only
    this rank's entry is known and the others stay None."""
    out: list = [None] * world_size
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_gather_object(out, obj)
    else:
        out[rank] = obj
    return out
