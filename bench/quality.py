"""Model quality per token: FlexBERT's tiny recipe against a plain PyTorch loop, same init, same data.

FlexBERT runs through the real entry point (`python train.py configs/tiny.yaml key=value ...`),
saving a checkpoint at every eval point. The plain loop trains transformers' ModernBertForMaskedLM
of the same shape from the same initial weights (flexbert.hf.to_transformers): torch AdamW with the
recipe's betas / eps / weight decay, the same peak LR and warmup then constant, padded rows masked
by DataCollatorForLanguageModeling at the recipe's rate, about the same real tokens per step.
Both are scored by one evaluator: MLM loss and masked accuracy over every validation document, cut
into max_seq_len rows, at the eval masking rate, with fixed masking seeds. The plain loop is scored
when its real-token count first reaches each FlexBERT checkpoint's, so the curves meet at equal
tokens. Two corpora: `data_prep sample` (Python stdlib source) and English prose made offline from
Python's pydoc topics and the installed packages' descriptions. The unigram baselines sit beside.

Usage: python bench/quality.py [--quick] [--seeds 3] [--steps 600] [--every 100]
       [--factors all|0,1,...] [--factor-seeds 2] [--factor-steps 400]
       [--corpora sample,prose] [--jobs 2] [--save | --out DIR]
       python bench/quality.py --quick --flex-overrides optimizer.name=stable_adamw   (one variant)
Runs are cached under --work (default runs/bench_quality) by their settings, so a rerun only
trains what changed. With --save, writes bench/results/quality.{json,md,png}.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import common as C  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

ROOT = C.ROOT
CONFIG = "configs/tiny.yaml"
EVAL_SEEDS = (0, 1, 2, 3)
EVAL_ROWS = 32

# Single-factor runs: each changes one thing against the shipped configs/tiny.yaml (optimi AdamW,
# pieces in random order from a 128-batch buffer, batch-size warmup 8 -> 32 rows over 200k
# tokens, no gradient clipping).
FACTORS = {
    "optimizer.name=stable_adamw (the recipe's per-tensor update clipping)":
        ["optimizer.name=stable_adamw"],
    "packing as base/large: longest piece first, 2-batch buffer":
        ["data.pack_order=longest", "data.pack_buffer_factor=2"],
    "no batch-size warmup": ["batch.warmup_start=null", "batch.warmup_tokens=0"],
    "trainer.grad_clip_norm=1.0": ["trainer.grad_clip_norm=1.0"],
    "optimizer.name=torch_adamw (wd scaled by LR)": ["optimizer.name=torch_adamw"],
    "scheduler.t_warmup=0tok (no LR warmup)": ["scheduler.t_warmup=0tok"],
    "decay norms and biases, not embeddings": ["optimizer.decay_norms_and_biases=true",
                                               "optimizer.decay_embeddings=false"],
    "model.init.type=normal (no depth scaling)": ["model.init.type=normal"],
    "data.mlm_probability=0.15": ["data.mlm_probability=0.15"],
    "masking 100% [MASK] (no 10/10)": ["data.mask_replace_fraction=1.0",
                                       "data.random_replace_fraction=0.0"],
    "model.sparse_prediction=false": ["model.sparse_prediction=false"],
    "model.attention.out_dropout=0.1 (base's)": ["model.attention.out_dropout=0.1"],
}


# --- corpora --------------------------------------------------------------------------------------

def prose_documents(max_bytes: int) -> list[str]:
    """English prose present on any installation: Python's pydoc topics, then the long
    descriptions of the installed distributions (sorted, deduplicated), cut at blank lines into
    documents of about 2 kB."""
    import pydoc_data.topics as topics
    import sysconfig

    texts = [topics.topics[k] for k in sorted(topics.topics)]
    site = Path(sysconfig.get_paths()["purelib"])
    seen = set()
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        body = meta.read_text(encoding="utf-8", errors="ignore").split("\n\n", 1)
        if len(body) == 2 and body[1].strip() and hash(body[1]) not in seen:
            seen.add(hash(body[1]))
            texts.append(body[1])
    docs, total = [], 0
    for text in texts:
        doc = ""
        for para in text.split("\n\n"):
            doc += para + "\n\n"
            if len(doc) > 2000:
                docs.append(doc.strip())
                total += len(doc)
                doc = ""
        if doc.strip():
            docs.append(doc.strip())
            total += len(doc)
        if total >= max_bytes:
            break
    return docs


def build_prose(out: Path, max_bytes: int) -> None:
    from data_prep.mds import MdsOptions, build_mds
    from data_prep.sources import SourceOptions
    from data_prep.tokenizer import train_tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    corpus, tokenizer = out.parent / "prose.jsonl", out.parent / "prose-tokenizer"
    docs = prose_documents(max_bytes)
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    train_tokenizer(docs, 4096, tokenizer)
    build_mds([str(corpus)], MdsOptions(tokenizer=str(tokenizer), out=str(out),
                                        val_fraction=0.03, seed=17, progress=False,
                                        overwrite=True, source=SourceOptions()))


def ensure_corpus(name: str, work: Path) -> Path:
    out = work / "corpora" / name
    if (out / "val" / "index.json").is_file():
        return out
    if name in ("sample", "sample8192"):  # sample8192: the earlier default, whole modules
        from data_prep.sample import build_sample

        build_sample(str(out), progress=False, **({"max_doc_tokens": 8192} if name != "sample"
                                                  else {}))
    elif name == "prose":
        build_prose(out, 4_000_000)
    else:
        raise SystemExit(f"--corpora: unknown corpus {name!r}; known: sample, sample8192, prose")
    return out


# --- shared evaluator -----------------------------------------------------------------------------

def rows_of(docs: list[np.ndarray], seq_len: int, cls: int, sep: int) -> list[np.ndarray]:
    """Each document [CLS] ... [SEP] cut into rows of at most seq_len, each row framed again."""
    rows = []
    for doc in docs:
        body = doc[1:] if len(doc) and doc[0] == cls else doc
        body = body[:-1] if len(body) and body[-1] == sep else body
        for start in range(0, max(len(body), 1), seq_len - 2):
            rows.append(np.concatenate([[cls], body[start:start + seq_len - 2], [sep]]))
    return rows


def pad(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attn = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], attn[i, :len(r)] = r, 1
    return ids, attn


class Evaluator:
    """MLM loss (sum of cross entropy / masked tokens) and masked accuracy over every validation
    row, masked 80/10/10 at `rate` with each of EVAL_SEEDS; the same batches for every model."""

    def __init__(self, val_docs: list[np.ndarray], seq_len: int, rate: float, special: dict,
                 vocab_size: int):
        from flexbert.data.masking import Masker

        rows = rows_of(val_docs, seq_len, special["cls"], special["sep"])
        masker = Masker(vocab_size, special["all"], special["mask"])
        self.batches = []
        for seed in EVAL_SEEDS:
            rng = np.random.default_rng(10_000 + seed)
            for i in range(0, len(rows), EVAL_ROWS):
                ids, attn = pad(rows[i:i + EVAL_ROWS], special["pad"])
                masked, labels = masker(ids, attn, rate, rng)
                self.batches.append(tuple(torch.from_numpy(a) for a in (masked, attn, labels)))

    @torch.no_grad()
    def __call__(self, hf_model: Any) -> dict[str, float]:
        was_training = hf_model.training
        hf_model.eval()
        total, correct, count = 0.0, 0, 0
        for ids, attn, labels in self.batches:
            logits = hf_model(input_ids=ids, attention_mask=attn).logits
            sel = labels != -100
            picked = logits[sel] if logits.dim() == 3 else logits
            targets = labels[sel]
            total += torch.nn.functional.cross_entropy(picked.float(), targets,
                                                       reduction="sum").item()
            correct += int((picked.argmax(-1) == targets).sum())
            count += int(targets.numel())
        hf_model.train(was_training)
        return {"loss": total / count, "accuracy": correct / count, "masked_tokens": count}


def special_ids(data_dir: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    return {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id,
            "mask": tok.mask_token_id, "all": sorted(tok.all_special_ids)}


def load_recipe(overrides: list[str]):
    from flexbert.train.recipe.load import load_recipe as load

    return load(str(ROOT / CONFIG), overrides)


def initial_model(recipe) -> Any:
    """The weights `python train.py` starts from: builder.build_trainer seeds, then builds."""
    from composer.utils import reproducibility

    from flexbert.model import FlexBertForMaskedLM

    reproducibility.seed_all(recipe.cfg.seed)
    return FlexBertForMaskedLM(recipe.model)


def flex_to_hf(model) -> Any:
    from flexbert.io.hf import to_transformers

    was_training = model.training
    model.eval()
    hf = to_transformers(model).float()
    model.train(was_training)
    return hf


def hf_sdpa(hf_model):
    """transformers' SDPA path also on CPU (the FlexBERT checkpoint conversion sets the same)."""
    hf_model.config._attn_implementation = "sdpa"
    return hf_model


# --- FlexBERT: the real entry point ---------------------------------------------------------------

def flex_run(data_dir: Path, seed: int, overrides: list[str], steps: int, every: int,
             folder: Path) -> list[dict]:
    """Train with train.py (checkpoint every `every` steps), then score each checkpoint."""
    from flexbert.io.checkpoint_reader import (checkpoint_info, load_checkpoint_state, load_weights,
                                            model_state)
    from flexbert.model import FlexBertForMaskedLM

    args = [f"data_dir={data_dir}", f"seed={seed}", f"data.seed={seed}", f"run_name=q{seed}",
            f"save_folder={folder}", f"max_duration={steps}ba", f"save_interval={every}ba",
            "save_num_checkpoints_to_keep=-1", f"eval_interval={steps}ba",
            "trainer.progress_bar=false", "restart=true", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    started = time.time()
    proc = run_train(args, env)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    wall = time.time() - started
    recipe = load_recipe([f"data_dir={data_dir}", *overrides])
    points = []
    for path in sorted(glob.glob(str(folder / "ep*-ba*-rank0.pt")),
                       key=lambda p: int(p.rsplit("-ba", 1)[1].split("-")[0])):
        state = load_checkpoint_state(path)
        info = checkpoint_info(state, path)
        model = FlexBertForMaskedLM(recipe.model)
        load_weights(model, model_state(state), path)
        points.append({"step": info["step"], "tokens": info["tokens"], "model": model})
    return points, wall


def run_train(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python train.py CONFIG args`. Two runs starting together can pick the same Streaming
    shared-memory name (its get_shm_prefix scans, then creates): such a run starts again."""
    for attempt in range(3):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / CONFIG), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode == 0 or "FileExistsError" not in proc.stderr:
            return proc
        time.sleep(5 + 10 * attempt)
    return proc


# --- the plain loop -------------------------------------------------------------------------------

def plain_run(data_dir: Path, seed: int, grid: list[int], tokens_per_step: float,
              evaluator: Evaluator, overrides: list[str]) -> tuple[list[dict], int, int]:
    """transformers' ModernBertForMaskedLM from FlexBERT's initial weights, torch AdamW, the
    recipe's LR and warmup (in steps of `tokens_per_step`) then constant, padded rows,
    DataCollatorForLanguageModeling; scored when its real tokens first reach each `grid` count."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from flexbert.data.unigram import read_split

    recipe = load_recipe([f"data_dir={data_dir}", f"seed={seed}", *overrides])
    cfg, opt = recipe.cfg, recipe.cfg.optimizer
    model = hf_sdpa(flex_to_hf(initial_model(recipe))).train()
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    rows = rows_of(read_split(data_dir, "train"), recipe.data.max_seq_len, tok.cls_token_id,
                   tok.sep_token_id)
    per_step = max(1, round(tokens_per_step / statistics.mean(len(r) for r in rows)))
    warmup_steps = warmup_in_steps(cfg.scheduler, tokens_per_step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                  eps=opt.eps, weight_decay=opt.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, s / warmup_steps) if warmup_steps else 1.0)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=recipe.data.mlm_probability)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order, pos, seen, step, points = rng.permutation(len(rows)), 0, 0, 0, []
    for target in grid:
        while seen < target:
            if pos + per_step > len(order):
                order, pos = rng.permutation(len(rows)), 0
            batch = collator([{"input_ids": rows[i].tolist()} for i in order[pos:pos + per_step]])
            pos += per_step
            model(**batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            seen += int(batch["attention_mask"].sum())
            step += 1
        points.append({"step": step, "tokens": seen, **evaluator(model)})
    return points, per_step, warmup_steps


def warmup_in_steps(scheduler: dict, tokens_per_step: float) -> int:
    from composer.core import Time, TimeUnit

    t = Time.from_timestring(str(scheduler.get("t_warmup", "0tok")))
    if t.unit == TimeUnit.TOKEN:
        return round(t.value / tokens_per_step)
    if t.unit == TimeUnit.BATCH:
        return int(t.value)
    raise SystemExit(f"scheduler.t_warmup {t}: the plain loop takes tok or ba")


# --- cells: one corpus, one seed, one side; cached as JSON ------------------------------------------

def cached(work: Path, name: str, key_parts: Any, compute) -> dict:
    text = json.dumps(key_parts, sort_keys=True, default=str)
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = work / "cells" / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def corpus_settings(data_dir: Path) -> dict:
    """What the corpus was built with (a rebuilt corpus must not reuse cached runs)."""
    stats = json.loads((data_dir / "stats.json").read_text())
    return {k: stats.get(k) for k in ("max_doc_tokens", "val_fraction", "seed", "tokens_written",
                                      "documents_written")}


def resolved(data_dir: Path, overrides: list[str]) -> str:
    """The recipe a run trains with, whether a value comes from the YAML or an override."""
    recipe = load_recipe([f"data_dir={data_dir}", *overrides])
    return repr((recipe.cfg, recipe.model, recipe.data))


def config_text() -> str:
    return (ROOT / CONFIG).read_text() + (ROOT / "configs/model/tiny.yaml").read_text()


def evaluator_for(data_dir: Path, recipe) -> Evaluator:
    from flexbert.data.unigram import read_split

    return Evaluator(read_split(data_dir, "val"), recipe.data.max_seq_len,
                     recipe.data.eval_mlm_probability, special_ids(data_dir),
                     recipe.model.vocab_size)


def flex_cell(corpus: str, data_dir: Path, seed: int, overrides: list[str], steps: int,
              every: int, work: Path) -> dict:
    """FlexBERT through train.py, each checkpoint scored by the shared evaluator."""
    def compute() -> dict:
        recipe = load_recipe([f"data_dir={data_dir}", *overrides])
        evaluator = evaluator_for(data_dir, recipe)
        folder = work / "ckpt" / f"{corpus}-s{seed}-{os.getpid()}"
        points, wall = flex_run(data_dir, seed, overrides, steps, every, folder)
        flex = [{"step": p["step"], "tokens": p["tokens"], **evaluator(flex_to_hf(p["model"]))}
                for p in points]
        for path in glob.glob(str(folder / "*.pt")):
            os.remove(path)
        return {"side": "flex", "corpus": corpus, "seed": seed, "overrides": overrides,
                "points": flex, "wall_s": round(wall, 1)}

    return cached(work, f"flex-{corpus}-s{seed}",
                  ["flex", corpus, seed, resolved(data_dir, overrides), steps, every,
                   corpus_settings(data_dir)], compute)


def plain_settings(recipe) -> dict:
    """What the plain loop takes from the recipe (its cache key, with the model shape)."""
    cfg = recipe.cfg
    return {"optimizer": {k: getattr(cfg.optimizer, k) for k in ("lr", "betas", "eps",
                                                                 "weight_decay")},
            "t_warmup": str(cfg.scheduler.get("t_warmup")), "seed": cfg.seed,
            "mlm": recipe.data.mlm_probability, "eval_mlm": recipe.data.eval_mlm_probability,
            "seq": recipe.data.max_seq_len, "rows": cfg.batch.global_train_batch_size,
            "model": (ROOT / "configs/model/tiny.yaml").read_text()}


def plain_cell(corpus: str, data_dir: Path, seed: int, overrides: list[str], max_tokens: int,
               grid_tokens: int, work: Path) -> dict:
    """The plain loop, scored every `grid_tokens` real tokens up to `max_tokens`; FlexBERT's
    points are compared with it by linear interpolation at their own token counts."""
    recipe = load_recipe([f"data_dir={data_dir}", f"seed={seed}", *overrides])
    # FlexBERT packs the full batch at >99%: its real tokens per step are rows x seq_len.
    per_step = recipe.cfg.batch.global_train_batch_size * recipe.data.max_seq_len

    def compute() -> dict:
        grid = list(range(grid_tokens, max_tokens + grid_tokens, grid_tokens))
        started = time.time()
        points, rows, warm = plain_run(data_dir, seed, grid, per_step,
                                       evaluator_for(data_dir, recipe), overrides)
        return {"side": "plain", "corpus": corpus, "seed": seed, "points": points,
                "rows_per_step": rows, "warmup_steps": warm, "tokens_per_step": per_step,
                "wall_s": round(time.time() - started, 1)}

    return cached(work, f"plain-{corpus}-s{seed}",
                  ["plain", corpus, seed, plain_settings(recipe), max_tokens, grid_tokens,
                   corpus_settings(data_dir)],
                  compute)


def baselines(data_dir: Path) -> dict:
    from flexbert.data.unigram import (read_split, token_frequencies, unigram_cross_entropy,
                                        unigram_entropy)

    special = special_ids(data_dir)["all"]
    train = token_frequencies(read_split(data_dir, "train"), special)
    val = token_frequencies(read_split(data_dir, "val"), special)
    return {"val_unigram_entropy": unigram_entropy(val),
            "train_unigram_on_val": unigram_cross_entropy(train, val, 4096),
            "train_tokens": sum(train.values()), "val_tokens": sum(val.values())}


# --- reporting ------------------------------------------------------------------------------------

def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def loss_at(points: list[dict], tokens: float, key: str = "loss") -> float:
    """`key` at `tokens`, linear between the two eval points around it."""
    return float(np.interp(tokens, [p["tokens"] for p in points], [p[key] for p in points]))


def curve_table(flex: list[dict], plain: list[dict]) -> list[dict]:
    """Per FlexBERT eval point: its tokens, FlexBERT's and the plain loop's loss there (mean and
    sd over seeds) and the per-seed differences."""
    by_seed = {c["seed"]: c for c in plain}
    out = []
    for i in range(len(flex[0]["points"])):
        f = [c["points"][i] for c in flex]
        p = [loss_at(by_seed[c["seed"]]["points"], c["points"][i]["tokens"]) for c in flex]
        pa = [loss_at(by_seed[c["seed"]]["points"], c["points"][i]["tokens"], "accuracy")
              for c in flex]
        out.append({"step": f[0]["step"], "tokens": round(statistics.mean(x["tokens"] for x in f)),
                    "flex_loss": mean_sd([x["loss"] for x in f]), "plain_loss": mean_sd(p),
                    "flex_acc": statistics.mean(x["accuracy"] for x in f),
                    "plain_acc": statistics.mean(pa),
                    "diff": [x["loss"] - y for x, y in zip(f, p)]})
    return out


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = ["### Model quality per token (FlexBERT tiny recipe vs a plain PyTorch loop)", "",
             f"`{CONFIG}` {' '.join(s['overrides'])} ({s['steps']} steps, eval every "
             f"{s['every']}), seeds {s['seeds']}, one evaluator (every validation row, eval mask "
             f"rate, masking seeds {list(EVAL_SEEDS)}). Plain loop: transformers "
             "ModernBertForMaskedLM, same initial weights, torch AdamW, same LR and warmup then "
             "constant, padded rows, DataCollatorForLanguageModeling, about the same real tokens "
             "per step; its loss is read at FlexBERT's token counts (linear between its evals, "
             f"every {s['grid']:,} tokens). Loss: mean ± sd over seeds; diff: FlexBERT − plain, "
             "mean (worst seed).", ""]
    for corpus, res in payload["corpora"].items():
        b = res["baselines"]
        lines += [f"**{corpus}** ({b['train_tokens']:,} train / {b['val_tokens']:,} val tokens; "
                  f"unigram model of the train tokens on val {b['train_unigram_on_val']:.3f}, "
                  f"val unigram entropy {b['val_unigram_entropy']:.3f})", ""]
        rows = [[f"{r['tokens']:,}", f"{r['flex_loss'][0]:.3f} ± {r['flex_loss'][1]:.3f}",
                 f"{r['plain_loss'][0]:.3f} ± {r['plain_loss'][1]:.3f}",
                 f"{statistics.mean(r['diff']):+.3f} ({max(r['diff']):+.3f})",
                 f"{r['flex_acc']:.3f}", f"{r['plain_acc']:.3f}"] for r in res["curve"]]
        lines += [C.table(["tokens", "FlexBERT loss", "plain loss", "diff (worst)",
                           "FlexBERT acc", "plain acc"], rows), ""]
        v = res["verdict"]
        lines += [f"Largest mean difference {v['worst_mean_diff']:+.3f} (standard error over "
                  f"seeds {v['standard_error']:.3f}) at {v['worst_tokens']:,} tokens: "
                  f"{'within' if v['met'] else 'NOT within'} +{v['margin']} of the plain loop "
                  "at every measured token count.", ""]
    if payload.get("factors"):
        f = payload["factors"]
        lines += [f"**Single factors** ({f['corpus']}, each a change to the recipe above, seeds "
                  f"{f['seeds']}; eval loss at {f['tokens']:,} tokens; vs recipe: mean over those "
                  f"seeds of (variant - recipe on the same seed); noise: sd over seeds of the "
                  f"recipe itself there, {f['noise']:.3f})", ""]
        rows = [[name, f"{r['loss']:.3f}", f"{r['diff']:+.3f}", r["n"]]
                for name, r in f["rows"].items()]
        lines += [C.table(["change", "eval loss", "vs recipe", "seeds"], rows)]
    return "\n".join(lines)


def plot(payload: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = payload["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
    for ax, (corpus, res) in zip(axes[0], corpora.items()):
        for side, color, marker in (("flex", "tab:blue", "o"), ("plain", "tab:orange", "s")):
            for c in res[side]:
                ax.plot([p["tokens"] for p in c["points"]], [p["loss"] for p in c["points"]],
                        color=color, alpha=0.5, marker=marker, markersize=3)
        b = res["baselines"]
        ax.axhline(b["train_unigram_on_val"], color="grey", linestyle="--",
                   label="unigram model of train tokens")
        ax.axhline(b["val_unigram_entropy"], color="grey", linestyle=":",
                   label="val unigram entropy")
        ax.plot([], [], color="tab:blue", marker="o", label="FlexBERT tiny recipe (train.py)")
        ax.plot([], [], color="tab:orange", marker="s", label="plain loop (HF + torch AdamW)")
        ax.set(title=f"{corpus}: eval MLM loss vs tokens", xlabel="tokens", ylabel="eval loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    out = C.RESULTS / "quality.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run_jobs(jobs: list[tuple], workers: int) -> list[dict]:
    if workers <= 1:
        return [_job(job) for job in jobs]
    with cf.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_job, jobs))


def _job(job: tuple) -> dict:
    torch.set_num_threads(1)
    try:
        os.nice(5)
    except OSError:
        pass
    kind, *args = job
    return (flex_cell if kind == "flex" else plain_cell)(*args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--grid", type=int, default=100_000, help="plain loop eval every N tokens")
    p.add_argument("--corpora", default="sample,prose")
    p.add_argument("--factors", default="", help="comma-separated indices into FACTORS, or all")
    p.add_argument("--factor-seeds", type=int, default=2)
    p.add_argument("--factor-steps", type=int, default=400)
    p.add_argument("--flex-overrides", nargs="*", default=[], help="key=value for both sides")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_quality"))
    C.add_output_args(p, "one seed, the sample corpus, 100 steps")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.quick:
        args.seeds, args.steps, args.every, args.corpora = 1, 100, 50, "sample"
    work, over = Path(args.work), list(args.flex_overrides)
    seeds = list(range(17, 17 + args.seeds))
    corpora = {name: ensure_corpus(name, work) for name in args.corpora.split(",")}
    max_tokens = args.steps * 32 * 128
    factors = list(FACTORS) if args.factors == "all" else \
        [list(FACTORS)[int(i)] for i in args.factors.split(",") if i]
    jobs = [("flex", n, d, s, over, args.steps, args.every, work)
            for n, d in corpora.items() for s in seeds]
    jobs += [("plain", n, d, s, over, max_tokens, args.grid, work)
             for n, d in corpora.items() for s in seeds]
    first = next(iter(corpora))  # the single-factor runs use the first corpus
    jobs += [("flex", first, corpora[first], s, over + FACTORS[f], args.factor_steps, args.every,
              work) for f in factors for s in seeds[:args.factor_seeds]]
    started = time.time()
    results = run_jobs(jobs, args.jobs)
    payload = {"benchmark": "quality", "machine": C.machine(torch.device("cpu")),
               "settings": {"steps": args.steps, "every": args.every, "seeds": seeds,
                            "grid": args.grid, "overrides": over, "config": CONFIG,
                            "config_text": config_text()},
               "corpora": {}}
    main_n = 2 * len(corpora) * len(seeds)
    for name, d in corpora.items():
        flex = [r for r in results[:main_n] if r["side"] == "flex" and r["corpus"] == name]
        plain = [r for r in results[:main_n] if r["side"] == "plain" and r["corpus"] == name]
        curve = curve_table(flex, plain)
        payload["corpora"][name] = {"baselines": baselines(d), "curve": curve,
                                    "verdict": verdict(curve), "flex": flex, "plain": plain}
    if factors:
        payload["factors"] = factor_table(results[:main_n], results[main_n:], over, first)
    payload["wall_s"] = round(time.time() - started, 1)
    md = markdown(payload)
    print(md)
    print(f"\n({payload['wall_s']:.0f} s)")
    C.save_results(args, "quality", payload, md, doc_section="quality",
                   plot_fn=lambda: plot(payload))


def factor_table(main: list[dict], factor_cells: list[dict], over: list[str], corpus: str) -> dict:
    """Eval loss per variant at the largest token count every run reached, and its difference
    from the unchanged recipe on the same seeds (same initial weights and data order, so the
    seed-to-seed spread, given as noise, mostly cancels)."""
    flex = {c["seed"]: c for c in main if c["side"] == "flex" and c["corpus"] == corpus}
    plain = [c for c in main if c["side"] == "plain" and c["corpus"] == corpus]
    tokens = min(c["points"][-1]["tokens"] for c in list(flex.values()) + factor_cells)
    base, sd = mean_sd([loss_at(c["points"], tokens) for c in flex.values()])
    rows = {"recipe as run (" + (" ".join(over) or "configs/tiny.yaml") + ")":
            {"loss": base, "diff": 0.0, "n": len(flex)}}
    pl = mean_sd([loss_at(c["points"], tokens) for c in plain])[0]
    rows["plain loop (reference)"] = {"loss": pl, "diff": pl - base, "n": len(plain)}
    for name, overrides in FACTORS.items():
        cells = [c for c in factor_cells if c["overrides"] == over + overrides]
        if cells:
            losses = [loss_at(c["points"], tokens) for c in cells]
            diffs = [x - loss_at(flex[c["seed"]]["points"], tokens) for x, c in zip(losses, cells)]
            rows[name] = {"loss": statistics.mean(losses), "diff": statistics.mean(diffs),
                          "n": len(cells)}
    return {"corpus": corpus, "seeds": sorted({c["seed"] for c in factor_cells}),
            "tokens": round(tokens), "noise": sd, "rows": rows}


def verdict(curve: list[dict], margin: float = 0.05) -> dict:
    """The acceptance: FlexBERT's mean loss at most `margin` above the plain loop's at every
    measured token count."""
    worst = max(curve, key=lambda r: statistics.mean(r["diff"]))
    gap, n = statistics.mean(worst["diff"]), len(worst["diff"])
    # noise: the standard error of that mean over seeds (each seed its own init and data order)
    se = statistics.stdev(worst["diff"]) / math.sqrt(n) if n > 1 else float("nan")
    return {"worst_tokens": worst["tokens"], "worst_mean_diff": gap, "standard_error": se,
            "margin": margin, "met": gap <= margin}


if __name__ == "__main__":
    main()
