"""Token-classification data: CoNLL-style or JSONL (`{"tokens": [...], "tags": [...]}`) files
with BIO tags -> rows of token ids whose first sub-token of each word carries the word's tag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexbert.finetune.config import FinetuneConfig
from flexbert.finetune.files import CONLL_SUFFIXES, TABLE_SUFFIXES, fail, read_conll, read_table, require

TAG_FIELDS = ("tags", "ner_tags", "labels")


@dataclass
class TokenTask:
    train: list[dict]          # {"tokens": [...], "tags": [...]}
    eval: list[dict]
    tag_names: list[str]       # "O" first, then sorted


def load_token_task(cfg: FinetuneConfig) -> TokenTask:
    from flexbert.finetune.data import local_split_files

    train_file, eval_file = local_split_files(cfg, CONLL_SUFFIXES + TABLE_SUFFIXES)
    train, dev = read_sentences(train_file, cfg), read_sentences(eval_file, cfg)
    if cfg.max_train_samples is not None:
        train = train[:cfg.max_train_samples]
    if cfg.max_eval_samples is not None:
        dev = dev[:cfg.max_eval_samples]
    tags = {t for s in train + dev for t in s["tags"]} - {"O"}
    return TokenTask(train, dev, ["O", *sorted(tags)])


def read_sentences(path: Path, cfg: FinetuneConfig) -> list[dict]:
    """Sentences with their BIO tags, each checked: as many tags as tokens, tags O / B-X / I-X."""
    if path.suffix.lower() in CONLL_SUFFIXES:
        rows, field = read_conll(path), "tags"
    else:
        rows = read_table(path)
        first = rows[0] if rows else {}
        field = cfg.label_field if cfg.label_field in first else next(
            (f for f in TAG_FIELDS if f in first), "tags")
    if not rows:
        raise fail(path, 1, "no sentences")
    out = []
    for row in rows:
        tokens, tags = require(row, path, "tokens", list), require(row, path, field, list)
        line = row.get("__line__", 0)
        if len(tokens) != len(tags):
            raise fail(path, line, f"field {field!r}: {len(tags)} tags for {len(tokens)} tokens")
        for tag in tags:
            if not (isinstance(tag, str) and (tag == "O" or tag[:2] in ("B-", "I-"))):
                raise fail(path, line, f"field {field!r}: {tag!r} is not a BIO tag (O, B-TYPE, I-TYPE)")
        if not all(isinstance(t, str) and t for t in tokens):
            raise fail(path, line, "field 'tokens': every token must be a non-empty string")
        out.append({"tokens": tokens, "tags": tags})
    return out


def encode_sentences(sentences: list[dict], tokenizer: Any, tag_names: list[str],
                     max_len: int) -> list[dict]:
    """input_ids and labels (tag id on each word's first sub-token, -100 elsewhere). Words are
    joined with spaces and found again through the tokenizer's character offsets, which works
    for any fast tokenizer (byte-level BPE included)."""
    index = {t: i for i, t in enumerate(tag_names)}
    rows = []
    for sentence in sentences:
        text, starts = "", []
        for word in sentence["tokens"]:
            text += " " if text else ""
            starts.append(len(text))
            text += word
        ends = [s + len(w) for s, w in zip(starts, sentence["tokens"])]
        enc = tokenizer(text, truncation=True, max_length=max_len, return_offsets_mapping=True)
        labels, word = [], 0
        for begin, end in enc["offset_mapping"]:
            while word < len(starts) and begin >= ends[word]:
                word += 1
            first = (word < len(starts) and end > begin and begin <= starts[word] < end)
            labels.append(index[sentence["tags"][word]] if first else -100)
        rows.append({"input_ids": enc["input_ids"], "labels": labels})
    return rows
