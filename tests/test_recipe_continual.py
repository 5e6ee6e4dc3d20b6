"""Continual pretraining (`model.init_from`) from a folder written by transformers: the first
training step's loss is the loss transformers computes on the same masked batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def corpus(sample_corpus) -> Path:
    """The session-wide sample corpus from conftest (built once for every test module)."""
    return sample_corpus


@pytest.fixture(scope="module")
def hf_folder(corpus, tmp_path_factory) -> Path:
    """A random tiny ModernBertForMaskedLM + the corpus tokenizer, saved by transformers."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(3)
    cfg = ModernBertConfig(vocab_size=4096, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, global_attn_every_n_layers=3,
                           local_attention=16, max_position_embeddings=1024,
                           global_rope_theta=160000.0, local_rope_theta=10000.0,
                           pad_token_id=2, bos_token_id=0, eos_token_id=1, cls_token_id=0,
                           sep_token_id=1)
    model = ModernBertForMaskedLM(cfg)
    out = tmp_path_factory.mktemp("hf") / "modernbert-random"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(corpus / "tokenizer").save_pretrained(out)
    return out


def recipe_args(corpus: Path, folder: Path, source: Path) -> list[str]:
    return [TINY, f"data_dir={corpus}", f"save_folder={folder}", "run_name=continual",
            "model.preset=null", f"model.init_from={source}", "model.attention.kernel=sdpa",
            "model.sparse_prediction=true", "max_duration=3ba", "save_interval=3ba",
            "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
            "export.hf_folder=null", "trainer.progress_bar=false", "scheduler.t_warmup=0tok",
            "optimizer.lr=1e-3"]


def unpack(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed rows -> one document per row (transformers' sdpa path cannot mask between packed
    documents), padded with the pad id; labels follow their tokens."""
    docs = []
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        ids, labels, pos = (batch[k][row][real] for k in ("input_ids", "labels", "position_ids"))
        starts = (pos == 0).nonzero().flatten().tolist() + [len(ids)]
        docs += [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:])]
    width = max(len(d[0]) for d in docs)
    ids = torch.full((len(docs), width), 2, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (d_ids, d_labels) in enumerate(docs):
        ids[i, :len(d_ids)], labels[i, :len(d_ids)], mask[i, :len(d_ids)] = d_ids, d_labels, 1
    return ids, mask, labels


def test_init_from_transformers_folder_first_loss_matches_transformers(corpus, hf_folder, tmp_path):
    from transformers import AutoModelForMaskedLM

    from flexbert.data import build_pretraining_dataloader
    from flexbert.train.recipe.load import load_recipe

    run = recipe_args(corpus, tmp_path / "run", hf_folder)
    recipe = load_recipe(run[0], run[1:])
    assert recipe.model.mask_token_id == 3  # from the folder's tokenizer, not guessed
    assert recipe.model.position.global_theta == 160000.0 and recipe.model.num_layers == 4
    assert main(run) == 0
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]

    loader = build_pretraining_dataloader(recipe.data, device_batch_size=32, split="train")
    batch = next(iter(loader))  # the trainer's first batch: masks are keyed on (seed, rank, index)
    ids, mask, labels = unpack(batch)
    assert (labels != -100).sum() == (batch["labels"] != -100).sum()
    hf = AutoModelForMaskedLM.from_pretrained(hf_folder, attn_implementation="sdpa").eval()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    print(f"first-step loss: flexbert {rows[0]['loss']:.7f} transformers {want:.7f}")
    assert rows[0]["loss"] == pytest.approx(want, rel=1e-5)
    assert rows[1]["loss"] != rows[0]["loss"]  # it trains
    # A fresh optimizer: step 1 ran at the recipe's LR with no loaded moments or schedule.
    ckpt = torch.load(tmp_path / "run" / "ep0-ba3-rank0.pt", map_location="cpu", weights_only=False)
    info = ckpt["state"]["callbacks"]["PhaseInfo"]
    assert info["history"] == [{"init_from": str(hf_folder)}] and info["step"] == 3


def test_init_from_rejects_load_path(corpus, hf_folder, tmp_path):
    from flexbert.config import ConfigError
    from flexbert.train.recipe.load import load_recipe

    run = recipe_args(corpus, tmp_path, hf_folder)
    with pytest.raises(ConfigError, match="model.init_from"):
        load_recipe(run[0], [*run[1:], "load_path=/x.pt"])


def test_init_from_with_preset_must_fit(corpus, hf_folder, tmp_path, capsys):
    """With a preset, the preset decides the architecture and the weights must fit it: one line
    naming the mismatch, exit 2."""
    run = recipe_args(corpus, tmp_path, hf_folder)
    args = [a for a in run if a != "model.preset=null"] + ["model.num_layers=2"]
    assert main(args) == 2
    assert "do not fit" in capsys.readouterr().err
