"""flexbert finetune: a learnable local task from a briefly pretrained tiny checkpoint, every model
source (Composer checkpoint, FlexBERT dir, HF folder), task loading and the metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from flexbert import cli
from flexbert.finetune import FinetuneConfig, load_task, read_pretrained

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
WORDS = ("the a of to and in is it for on with as was at by from this that be are or an not def "
         "class return import self print value list dict name file path data error none true "
         "false while yield lambda").split()


def write_contains_word_task(root: Path, n_train: int = 800, n_eval: int = 200, word: str = "banana",
                             fmt: str = "jsonl") -> tuple[Path, Path]:
    """Label 1 iff the sentence contains `word` (anywhere); balanced, deterministic."""
    rng = random.Random(0)

    def rows(n):
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            label = i % 2
            if label:
                words.insert(rng.randrange(len(words) + 1), word)
            yield {"text": " ".join(words), "label": label}

    paths = []
    for split, n in (("train", n_train), ("dev", n_eval)):
        path = root / f"{split}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
        else:
            path.write_text("text,label\n" + "".join(f"{r['text']},{'yes' if r['label'] else 'no'}\n"
                                                     for r in rows(n)))
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def pretrained(sample_corpus, tmp_path_factory) -> Path:
    """A tiny model pretrained for 20 MLM steps on the sample corpus (Composer checkpoint)."""
    from flexbert.train.main import main

    folder = tmp_path_factory.mktemp("pretrained")
    assert main([TINY, f"data_dir={sample_corpus}", f"save_folder={folder}", "run_name=ft",
                 "max_duration=20ba", "save_interval=20ba", "eval_interval=1000ba",
                 "batch.warmup_start=null", "batch.global_train_batch_size=8",
                 "trainer.device_train_microbatch_size=8", "scheduler.t_warmup=2000tok",
                 "trainer.precision=fp32", "trainer.progress_bar=false",
                 "trainer.log_to_console=false", "export.hf_folder=null"]) == 0
    assert (folder / "latest-rank0.pt").exists()
    return folder


def test_finetune_from_pretrained_checkpoint_beats_chance(pretrained, sample_corpus, tmp_path, capsys):
    """Chance is 50 %; a model that learned the task is near 100 %."""
    train, dev = write_contains_word_task(tmp_path)
    out = tmp_path / "ft"
    code = cli.main(["finetune", "--model", str(pretrained), "--model-config", TINY,
                     "--tokenizer", str(sample_corpus / "tokenizer"), "--task", f"{train},{dev}",
                     "--max-seq-len", "32", "--epochs", "2", "--lr", "2e-3", "--precision", "fp32",
                     "--save-folder", str(out)])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == result
    assert result["num_labels"] == 2 and result["eval_examples"] == 200
    assert result["steps"] == 50  # 2 epochs x ceil(800 / 32)
    assert result["accuracy"] >= 0.85, result
    assert result["matthews"] >= 0.7 and result["f1"] >= 0.85, result


def test_every_model_source_gives_the_same_encoder(pretrained, sample_corpus, tmp_path):
    from transformers import AutoTokenizer

    from flexbert.finetune import load_tokenizer
    from flexbert.io.hf import save_flexbert, save_hf
    from flexbert.model import FlexBertForMaskedLM

    cfg, state = read_pretrained(str(pretrained / "latest-rank0.pt"), TINY)
    model = FlexBertForMaskedLM(cfg)
    model.load_state_dict(state)
    tok = AutoTokenizer.from_pretrained(str(sample_corpus / "tokenizer"))
    save_flexbert(model, tmp_path / "flex")
    save_hf(model, tmp_path / "hf", tok)
    key = "model.layers.1.attn.Wqkv.weight"
    for source in (tmp_path / "flex", tmp_path / "hf"):
        cfg2, state2 = read_pretrained(str(source))
        assert cfg2.hidden_size == cfg.hidden_size and torch.equal(state2[key], state[key]), source
    assert load_tokenizer(str(tmp_path / "hf"), None).mask_token == "[MASK]"
    cfg3, state3 = read_pretrained(str(pretrained))  # the model config from the PhaseInfo
    assert cfg3.hidden_size == cfg.hidden_size and torch.equal(state3[key], state[key])
    with pytest.raises(ValueError, match="--model: .*nothing: no such file or folder"):
        read_pretrained(str(tmp_path / "nothing"))


def test_local_csv_with_string_labels(tmp_path):
    train, dev = write_contains_word_task(tmp_path, 40, 10, fmt="csv")
    task = load_task(FinetuneConfig(task=str(train), eval_file=str(dev)))
    assert task.text_fields == ["text"] and task.num_labels == 2
    assert task.label_names == ["no", "yes"] and set(task.train["label"]) == {0, 1}
    assert task.problem_type == "single_label_classification"
    with pytest.raises(Exception, match="give a train and an eval file"):
        load_task(FinetuneConfig(task=str(train)))
    with pytest.raises(Exception, match=r"train.csv:2: field 'sentence' missing"):
        load_task(FinetuneConfig(task=f"{train},{dev}", text_fields=["sentence"]))


def test_glue_names_map_to_fields_and_label_counts(monkeypatch):
    """GLUE tasks go through datasets.load_dataset('nyu-mll/glue', task); the loader is replaced
    by an in-memory DatasetDict with GLUE's columns (no network in tests)."""
    import datasets

    calls = []

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config))
        if config == "stsb":
            rows = {"sentence1": ["a b", "c d"], "sentence2": ["a", "d"], "label": [4.2, 0.5]}
        else:
            rows = {"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [0, 2]}
        ds = datasets.Dataset.from_dict(rows)
        return datasets.DatasetDict({"train": ds, "validation": ds, "validation_matched": ds})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    stsb = load_task(FinetuneConfig(task="stsb"))
    assert calls[-1] == ("nyu-mll/glue", "stsb")
    assert stsb.text_fields == ["sentence1", "sentence2"]
    assert stsb.problem_type == "regression" and stsb.num_labels == 1
    mnli = load_task(FinetuneConfig(task="MNLI"))
    assert calls[-1] == ("nyu-mll/glue", "mnli")
    assert mnli.text_fields == ["premise", "hypothesis"] and mnli.num_labels == 3


def test_metrics_classification_and_regression():
    from types import SimpleNamespace

    from flexbert.config import ModelConfig
    from flexbert.finetune.model import ComposerFlexBertClassifier

    cfg = ModelConfig()
    cfg.classifier.num_labels, cfg.classifier.problem_type = 1, "regression"
    model = ComposerFlexBertClassifier(SimpleNamespace(config=cfg))
    labels = torch.tensor([0.0, 1.0, 2.0, 3.0])
    out = SimpleNamespace(logits=(2 * labels + 1).unsqueeze(-1))
    for name, metric in model.eval_metrics.items():
        model.update_metric({"labels": labels}, out, metric)
    values = {k: float(m.compute()) for k, m in model.eval_metrics.items()}
    assert values["Pearson"] == pytest.approx(1.0) and values["Spearman"] == pytest.approx(1.0)

    cfg.classifier.num_labels, cfg.classifier.problem_type = 2, "single_label_classification"
    model = ComposerFlexBertClassifier(SimpleNamespace(config=cfg))
    labels = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # 3 of 4 right
    for metric in model.eval_metrics.values():
        model.update_metric({"labels": labels}, SimpleNamespace(logits=logits), metric)
    values = {k: float(m.compute()) for k, m in model.eval_metrics.items()}
    assert values["Accuracy"] == pytest.approx(0.75)
    assert values["F1"] == pytest.approx(2 / 3)          # positive class: P=1, R=1/2
    assert values["Matthews"] == pytest.approx(1 / 3 ** 0.5, abs=1e-4)
