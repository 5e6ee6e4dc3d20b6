"""Single-vector retrieval with sentence-transformers: a BEIR-style folder (corpus.jsonl,
queries.jsonl, qrels/*.tsv) -> mean- or CLS-pooled embeddings trained contrastively on (query,
positive) pairs with in-batch negatives (MultipleNegativesRankingLoss) -> nDCG@10 and MRR@10
over the corpus, before (baseline_*) and after training."""

from __future__ import annotations

import csv
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexbert.config import ConfigError
from flexbert.finetune.config import FinetuneConfig
from flexbert.finetune.files import fail, read_table, require

EVAL_QRELS = ("test", "dev", "validation")


@dataclass
class RetrievalTask:
    corpus: dict[str, str]            # doc id -> text (title and text joined)
    queries: dict[str, str]
    train_pairs: list[tuple[str, str]]  # (query text, positive doc text)
    relevant: dict[str, set[str]]     # eval query id -> relevant doc ids


def load_beir(folder: str | Path, max_train: int | None = None) -> RetrievalTask:
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; a retrieval task folder holds "
                                    "corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv")
    corpus = {}
    for row in read_table(folder / "corpus.jsonl"):
        doc_id = str(require(row, folder / "corpus.jsonl", "_id", (str, int)))
        text = require(row, folder / "corpus.jsonl", "text", str)
        corpus[doc_id] = f"{row['title']} {text}" if isinstance(row.get("title"), str) and row["title"] else text
    queries = {str(require(r, folder / "queries.jsonl", "_id", (str, int))):
               require(r, folder / "queries.jsonl", "text", str)
               for r in read_table(folder / "queries.jsonl")}
    train = read_qrels(folder / "qrels" / "train.tsv", queries, corpus)
    eval_file = next((folder / "qrels" / f"{n}.tsv" for n in EVAL_QRELS
                      if (folder / "qrels" / f"{n}.tsv").is_file()), None)
    if eval_file is None:
        raise FileNotFoundError(f"{folder / 'qrels'}: no test.tsv (or dev.tsv) to evaluate on")
    relevant: dict[str, set[str]] = {}
    for qid, did in read_qrels(eval_file, queries, corpus):
        relevant.setdefault(qid, set()).add(did)
    pairs = [(queries[q], corpus[d]) for q, d in train][:max_train]
    return RetrievalTask(corpus, queries, pairs, relevant)


def read_qrels(path: Path, queries: dict, corpus: dict) -> list[tuple[str, str]]:
    """(query id, doc id) with score > 0; a header line (query-id, corpus-id, score) is skipped."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise fail(path, number, "expected query-id<TAB>corpus-id<TAB>score")
            qid, did, score = row[0], row[1], row[2]
            if qid not in queries:
                raise fail(path, number, f"field 'query-id': {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise fail(path, number, f"field 'corpus-id': {did!r} is not in corpus.jsonl")
            try:
                if float(score) > 0:
                    out.append((qid, did))
            except ValueError:
                raise fail(path, number, f"field 'score': {score!r} is not a number") from None
    return out


def _st():
    """sentence-transformers' modules, losses and evaluators (their home moved in 5.x)."""
    try:
        from sentence_transformers.sentence_transformer import evaluation, losses
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import evaluation, losses, models
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer, models, losses, evaluation


def sentence_model(folder: str, pooling: str, max_len: int, device: str):
    """A SentenceTransformer over a Hugging Face ModernBERT folder with the chosen pooling."""
    import json

    SentenceTransformer, models, _, _ = _st()
    hidden = json.loads((Path(folder) / "config.json").read_text())["hidden_size"]
    encoder = models.Transformer(folder, max_seq_length=max_len)
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is not None:  # folders saved before their tokenizer config said so
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return SentenceTransformer(modules=[encoder, models.Pooling(hidden, pooling)], device=device)


def evaluate(model: Any, task: RetrievalTask, batch_size: int) -> dict[str, float]:
    """nDCG@10 and MRR@10 (cosine similarity) of the eval queries over the whole corpus."""
    _, _, _, evaluation = _st()
    queries = {q: task.queries[q] for q in task.relevant}
    evaluator = evaluation.InformationRetrievalEvaluator(
        queries, task.corpus, task.relevant, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1],
        precision_recall_at_k=[10], map_at_k=[10], batch_size=batch_size, name="eval",
        write_csv=False, show_progress_bar=False)
    scores = evaluator(model)
    pick = {m: next(v for k, v in scores.items() if "cosine" in k and k.endswith(m))
            for m in ("ndcg@10", "mrr@10")}
    return {k: float(v) for k, v in pick.items()}


def train(model: Any, task: RetrievalTask, cfg: FinetuneConfig) -> tuple[int, float]:
    """In-batch-negative contrastive training; (steps, last loss). A short loop of our own: the
    sentence-transformers Trainer would pull in accelerate for what is a few optimizer steps."""
    _, _, losses, _ = _st()
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pairs, rng = list(task.train_pairs), random.Random(cfg.seed)
    per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    warm = max(1, int(cfg.warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    model.train()
    loss, order = torch.tensor(0.0), []
    for step in range(total):
        if not order:
            order = rng.sample(range(len(pairs)), len(pairs))
        batch = [pairs[i] for i in order[:cfg.batch_size]]
        order = order[cfg.batch_size:]
        encode = getattr(model, "preprocess", None) or model.tokenize  # renamed in 5.x
        features = [_to(encode([p[k] for p in batch]), model.device) for k in (0, 1)]
        loss = loss_fn(features, torch.empty(0))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return total, float(loss)


def _to(features: dict, device: Any) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def hf_folder(cfg: FinetuneConfig, scratch: str) -> str:
    """cfg.model as a Hugging Face folder (what sentence-transformers reads): as it is, or a
    FlexBERT dir / Composer checkpoint converted into `scratch` with its tokenizer."""
    if (Path(cfg.model) / "config.json").is_file() and cfg.tokenizer is None:
        return str(cfg.model)
    from flexbert.finetune.loading import load_encoder, load_tokenizer
    from flexbert.io.hf import save_hf
    from flexbert.model import FlexBertForMaskedLM

    model_cfg, state = load_encoder(cfg.model, cfg.model_config)
    model = FlexBertForMaskedLM(model_cfg)
    model.load_state_dict(state, strict=False)
    return str(save_hf(model, Path(scratch) / "hf", load_tokenizer(cfg.model, cfg.tokenizer)))


def run_retrieval(cfg: FinetuneConfig) -> dict[str, Any]:
    from flexbert.runtime.device import pick_device

    if cfg.pooling not in (None, "mean", "cls"):
        raise ConfigError(f"finetune.pooling: {cfg.pooling!r}; allowed: mean, cls")
    task = load_beir(cfg.task, cfg.max_train_samples)
    if not task.train_pairs:
        raise ConfigError(f"{cfg.task}/qrels/train.tsv: no (query, positive) pairs with score > 0")
    device = "cuda" if pick_device(cfg.device) == "gpu" else "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(cfg.seed)
        model = sentence_model(hf_folder(cfg, scratch), cfg.pooling or "mean", cfg.max_seq_len, device)
        baseline = evaluate(model, task, cfg.eval_batch_size)
        steps, last_loss = train(model, task, cfg)
        if cfg.save_folder and cfg.save_checkpoints:
            model.save(str(Path(cfg.save_folder) / "sentence-transformer"))
    result = {"train_examples": len(task.train_pairs), "eval_examples": len(task.relevant),
              "corpus_size": len(task.corpus), "steps": steps, "train_loss": last_loss}
    result.update({f"baseline_{k}": v for k, v in baseline.items()})
    return {**result, **evaluate(model, task, cfg.eval_batch_size)}
