"""MLM masking: choose positions with a given probability, then 80/10/10 [MASK]/random/unchanged.

Special tokens (CLS, SEP, PAD, MASK, UNK, fillers) are never chosen and never drawn as random
replacements, so the model is not taught to predict framing tokens.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


class Masker:
    """Holds the per-vocabulary lookup tables so masking a batch is a few vectorised numpy ops."""

    def __init__(self, vocab_size: int, special_ids, mask_id: int, mask_frac: float = 0.8, random_frac: float = 0.1):
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[np.asarray(list(special_ids), dtype=np.int64)] = True
        self.replacements = np.flatnonzero(~self.special)
        self.mask_id = mask_id
        self.mask_frac = mask_frac
        self.random_frac = random_frac

    def __call__(self, ids: np.ndarray, attention_mask: np.ndarray, prob: float, rng: np.random.Generator):
        """Return (masked input ids, labels); labels are -100 wherever no prediction is asked."""
        maskable = attention_mask.astype(bool) & ~self.special[ids]
        chosen = maskable & (rng.random(ids.shape) < prob)
        labels = np.where(chosen, ids, IGNORE_INDEX)
        action = rng.random(ids.shape)
        to_mask = chosen & (action < self.mask_frac)
        to_rand = chosen & (action >= self.mask_frac) & (action < self.mask_frac + self.random_frac)
        out = ids.copy()
        out[to_mask] = self.mask_id
        out[to_rand] = self.replacements[rng.integers(0, len(self.replacements), int(to_rand.sum()))]
        return out, labels
