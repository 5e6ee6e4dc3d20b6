"""What the end-of-run summary says about the model itself: its eval loss against the unigram
baseline of the validation tokens, and a fill-mask on a line the model never trained on.

Both read the run's local validation split (data_prep layout) and its tokenizer; either is left
out, with one warning, when the data is remote or not token ids.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import numpy as np
import torch

from flexbert.data.unigram import read_split, token_frequencies, unigram_entropy

log = logging.getLogger("flexbert.train")
MIN_CHARS, MAX_CHARS, MIN_TOKENS = 16, 60, 6


def validation_documents(recipe: Any) -> list[np.ndarray]:
    """Every local stream's validation documents (the split Composer evaluates on)."""
    docs: list[np.ndarray] = []
    for stream in recipe.data.streams.values():
        if stream.local and not stream.remote:
            docs += read_split(stream.local, stream.split or "val") or []
    return docs


def special_ids(recipe: Any, tokenizer: Any) -> set[int]:
    cfg = recipe.model
    ids = {cfg.pad_token_id, cfg.mask_token_id, cfg.cls_token_id, cfg.sep_token_id,
           cfg.bos_token_id, cfg.eos_token_id}
    return {int(i) for i in ids if i is not None} | set(getattr(tokenizer, "all_special_ids", []))


def maskable_position(tokenizer: Any, ids: list[int]) -> Optional[int]:
    """The middle one of the line's whole-word tokens (a word start, an identifier of 3+
    characters), so the blank is a word, not the tail of one."""
    words = [i for i in range(2, len(ids) - 1)
             if (t := tokenizer.decode([ids[i]])).startswith(" ") and t.strip().isidentifier()
             and len(t.strip()) >= 3]
    return words[len(words) // 2] if words else None


def held_back_line(tokenizer: Any, docs: list[np.ndarray]) -> Optional[tuple[str, list[int], int]]:
    """The first validation line of MIN_CHARS..MAX_CHARS characters and MIN_TOKENS+ tokens that
    has a whole word to mask: (line, ids with [CLS]/[SEP], masked position). Chosen by these
    rules alone, never by how well the model does on it."""
    for doc in docs:
        for line in tokenizer.decode(doc.tolist(), skip_special_tokens=True).splitlines():
            line = line.strip()
            if not MIN_CHARS <= len(line) <= MAX_CHARS:
                continue
            ids = tokenizer(line, add_special_tokens=True)["input_ids"]
            pos = maskable_position(tokenizer, ids) if len(ids) >= MIN_TOKENS + 2 else None
            if pos is not None:
                return line, ids, pos
    return None


@torch.no_grad()
def top_predictions(model: Any, ids: list[int], pos: int, mask_id: int, k: int = 3) -> list:
    """(token id, probability) of the model's k best fillers for position `pos`."""
    device = next(model.parameters()).device
    masked = torch.tensor([ids], device=device)
    masked[0, pos] = mask_id
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=masked, attention_mask=torch.ones_like(masked)).logits
    finally:
        model.train(was_training)
    probs = logits.reshape(-1, logits.shape[-1])[pos].float().softmax(-1)
    top = probs.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist()))


def fill_mask_line(model: Any, tokenizer: Any, docs: list[np.ndarray], mask_id: int) -> Optional[str]:
    found = held_back_line(tokenizer, docs)
    if found is None:
        return None
    line, ids, pos = found
    lead = " " if tokenizer.decode([ids[pos]]).startswith(" ") else ""
    shown = tokenizer.decode(ids[1:pos]) + lead + "[MASK]" + tokenizer.decode(ids[pos + 1:-1])
    best = top_predictions(model, ids, pos, mask_id)
    guesses = ", ".join(f"{tokenizer.decode([t]).strip()!r} {p:.2f}" for t, p in best)
    answer = tokenizer.decode([ids[pos]]).strip()
    return f"{shown.strip()}  ->  {guesses} (held-back answer {answer!r})"


def quality_rows(recipe: Any, model: Optional[Any], eval_loss: Optional[float]) -> list[tuple]:
    """Summary rows: the unigram baseline beside the eval loss, and the fill-mask example."""
    from flexbert.train.recipe.data import export_tokenizer

    try:
        docs = validation_documents(recipe)
        tokenizer = export_tokenizer(recipe.cfg) if os.path.isdir(
            recipe.cfg.export.tokenizer or os.path.join(recipe.cfg.data_dir, "tokenizer")) else None
        if not docs:
            return []
        baseline = unigram_entropy(token_frequencies(docs, special_ids(recipe, tokenizer)))
        gap = "" if eval_loss is None else (
            f"; eval loss {eval_loss:.4f} is {abs(eval_loss - baseline):.4f} "
            f"{'below' if eval_loss < baseline else 'above'} it")
        rows = [("unigram", f"{baseline:.4f} (entropy of the validation tokens{gap})")]
        if model is not None and tokenizer is not None:
            line = fill_mask_line(model, tokenizer, docs, recipe.model.mask_token_id)
            rows += [("fill-mask", line)] if line else []
        return rows
    except (OSError, ValueError, RuntimeError, KeyError) as err:  # a summary must not fail a run
        log.warning("summary: no unigram baseline / fill-mask example: %s", err)
        return []
