"""Fast checks of the evaluation parts: the GLUE grid and average, the summary over seeds and
grid points, task files with errors naming file and line, BIO spans and entity F1, word-label
alignment, task names, and classifier init independent of the model source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flexbert import cli
from flexbert.evaluation.glue import GLUE_SUITE, glue_average, glue_grid
from flexbert.evaluation.report import summarize
from flexbert.evaluation.tasks import parse_tasks
from flexbert.finetune import FinetuneConfig, task_kind, task_name
from flexbert.finetune.token_classification import EntityF1, bio_spans


def test_glue_grid_and_average():
    assert len(GLUE_SUITE) == 8 and "wnli" not in GLUE_SUITE
    rte, sst2 = glue_grid("rte"), glue_grid("sst2")
    assert len(rte) == 12 and {p["lr"] for p in rte} == {1e-5, 3e-5, 5e-5, 8e-5}
    assert {p["epochs"] for p in rte} == {2.0, 5.0, 10.0} and {p["epochs"] for p in sst2} == {1.0, 2.0, 3.0}
    assert {p["batch_size"] for p in glue_grid("mnli")} == {64}
    scores = {t: 0.5 for t in GLUE_SUITE}
    assert glue_average(scores) == pytest.approx(50.0)
    del scores["rte"]
    assert glue_average(scores) is None
    tasks = parse_tasks(["glue"])
    assert [t.name for t in tasks] == list(GLUE_SUITE) and len(tasks[0].seeds) == 3


def test_summary_takes_the_best_grid_point_and_averages_the_suite():
    tasks = parse_tasks(["glue"])
    rows = []
    for task in GLUE_SUITE:
        metric = {t.name: t.main_metric for t in tasks}[task]
        for settings, scores in (("lr=1e-05", (0.2, 0.4)), ("lr=3e-05", (0.6, 0.8))):
            rows += [{"source": "m", "step": 5, "tokens": 100, "task": task, "settings": settings,
                      "seed": s, metric: v, "finished": 0.0} for s, v in enumerate(scores)]
    summary = summarize(rows, tasks)
    cola = next(r for r in summary if r["task"] == "cola" and r["metric"] == "matthews")
    assert cola["mean"] == pytest.approx(0.7) and cola["settings"] == "lr=3e-05"
    assert cola["std"] == pytest.approx(0.1414, abs=1e-3) and cola["seeds"] == 2
    glue = next(r for r in summary if r["task"] == "glue")
    assert glue["mean"] == pytest.approx(70.0) and glue["tokens"] == 100


def test_glue_offline_fails_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = cli.main(["eval", str(model), "--tasks", "glue", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "GLUE data" in err[0] and "not reachable" in err[0]


@pytest.mark.parametrize("name,content,message", [
    ("train.jsonl", '{"text": "a b", "label": 1}\n{"txt": "c", "label": 0}\n',
     r"train.jsonl:2: field 'text' missing"),
    ("train.jsonl", '{"text": "a b", "label": 1}\nnot json\n', r"train.jsonl:2: not valid JSON"),
    ("train.csv", "text,label\na b,1\nc,d,0\n", r"train.csv:3: expected 2 columns"),
    ("train.conll", "alice B-PER\nsays O\n\nbob PERSON\n", r"train.conll:4: field 'tags': 'PERSON' is not a BIO tag"),
])
def test_bad_task_files_name_file_line_and_field(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_text(content)
    (tmp_path / name.replace("train", "dev")).write_text(content)
    code = cli.main(["finetune", "--model", str(tmp_path / "none"), "--task", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


def test_bad_qrels_name_the_line(tmp_path, capsys):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    assert task_kind(FinetuneConfig(task=str(tmp_path))) == "retrieval"
    code = cli.main(["finetune", "--model", str(tmp_path / "none"), "--task", str(tmp_path)])
    assert code == 2
    assert "train.tsv:3: field 'corpus-id': 'd9' is not in corpus.jsonl" in capsys.readouterr().err


def test_bio_spans_and_entity_f1():
    assert bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == {
        (0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 6, "PER")}
    names = ["O", "B-PER", "I-PER"]
    metric = EntityF1(names)
    labels = torch.tensor([[-100, 1, 2, 0, 1, -100]])   # gold: PER(0,2), PER(3,4)
    preds = torch.tensor([[0, 1, 2, 0, 0, 1]])          # found the first only
    metric.update(preds, labels)
    assert float(metric.compute()) == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_word_labels_sit_on_first_sub_tokens(data_tokenizer):
    from transformers import AutoTokenizer

    from flexbert.finetune.token_data import encode_sentences

    tok = AutoTokenizer.from_pretrained(str(data_tokenizer))
    sentence = {"tokens": ["zqxjkvw", "is", "unbelievablyweird"], "tags": ["B-X", "O", "B-Y"]}
    row = encode_sentences([sentence], tok, ["O", "B-X", "B-Y"], 64)[0]
    labelled = [(i, y) for i, y in enumerate(row["labels"]) if y != -100]
    assert [y for _, y in labelled] == [1, 0, 2]
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    assert pieces[labelled[0][0]].lstrip("Ġ").startswith("z")


def test_task_names_and_kinds(tmp_path):
    folder = tmp_path / "sentiment"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\na,1\n")
    (folder / "dev.csv").write_text("text,label\na,1\n")
    assert task_name(FinetuneConfig(task=str(folder))) == "sentiment"
    assert task_name(FinetuneConfig(task=f"{folder / 'train.csv'},{folder / 'dev.csv'}")) == "sentiment"
    assert task_name(FinetuneConfig(task=str(folder), name="mine")) == "mine"
    assert task_kind(FinetuneConfig(task=str(folder))) == "classification"
    (folder / "train.jsonl").write_text(json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n")
    assert task_kind(FinetuneConfig(task=str(folder / "train.jsonl"))) == "token_classification"
    named = parse_tasks([f"senti={folder}", "rte"])
    assert [(t.name, t.kind, t.main_metric) for t in named] == [
        ("senti", "classification", "accuracy"), ("rte", "classification", "accuracy")]


def test_classifier_init_does_not_depend_on_the_model_source(tmp_path):
    """The same weights from an HF folder and a FlexBERT dir give the same classifier (issue 13:
    reading an HF folder consumed RNG and changed the init)."""
    from flexbert.finetune.model import classification_model
    from flexbert.io.hf import save_flexbert, save_hf
    from flexbert.model import FlexBertForMaskedLM
    from tests.helpers import tiny_config

    model = FlexBertForMaskedLM(tiny_config(**{"attention.local_window": 4}))
    save_hf(model, tmp_path / "hf")
    save_flexbert(model, tmp_path / "flex")
    heads = [classification_model(FinetuneConfig(model=str(tmp_path / s), seed=5), 3,
                                  "single_label_classification").classifier.weight
             for s in ("hf", "flex")]
    assert torch.equal(heads[0], heads[1])
    other = classification_model(FinetuneConfig(model=str(tmp_path / "hf"), seed=6), 3,
                                 "single_label_classification").classifier.weight
    assert not torch.equal(heads[0], other)


def test_finetune_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--lr", "--epochs", "--max-seq-len", "--seed", "--label-field", "--pooling"):
        assert option in text
    assert "(default: 5e-05)" in text and "(default: 128)" in text and "(default: label)" in text
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tasks" in text and "(default: 17)" in text and "(default: 3.0)" in text


@pytest.mark.parametrize("overrides,message", [
    (["callbacks.downstream_eval.tasks=[nothere]"], r"downstream_eval.tasks: .*nothere does not exist"),
    (["callbacks.downstream_eval.tasks=[sst2]", "callbacks.downstream_eval.options={epoch: 2}"],
     r"downstream_eval.options: unknown \['epoch'\]"),
    (["callbacks.downstream_eval.tasks=[sst2]", "callbacks.downstream_eval.every=often"],
     r"downstream_eval.every: 'often' is not a time string"),
    ([], r"downstream_eval.tasks: give at least one task"),
])
def test_downstream_eval_recipe_errors_name_the_key(overrides, message):
    from flexbert.config import ConfigError
    from flexbert.train.recipe.load import load_recipe

    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    with pytest.raises(ConfigError, match=message):
        load_recipe(tiny, ["callbacks.downstream_eval.enabled=true", *overrides])


def test_saved_tokenizers_give_no_token_type_ids(data_tokenizer):
    """ModernBERT's forward takes no token_type_ids; sentence-transformers passes whatever the
    tokenizer returns, so a published folder's tokenizer must not produce them."""
    from transformers import AutoTokenizer

    assert list(AutoTokenizer.from_pretrained(str(data_tokenizer))("a b")) == ["input_ids", "attention_mask"]


def test_results_of_an_earlier_run_in_the_same_folder_are_dropped(tmp_path, capsys):
    """restart=true reuses the folder and checkpoint names: rows (and published model folders)
    of the run before carry its run id and go, with a note; the new run's and id-less rows stay."""
    from flexbert.evaluation.runner import RESULTS_FILE, drop_stale, read_results

    run, out = tmp_path / "run", tmp_path / "run" / "eval"
    (out / "models" / "run__ep0-ba600").mkdir(parents=True)
    (run / "run_id").write_text("new\n")
    rows = [{"source": "run/ep0-ba600", "path": str(run / "ep0-ba600-rank0.pt"), "run_id": "old",
             "task": "t", "settings": "", "seed": 1},
            {"source": "run/ep0-ba60", "path": str(run / "ep0-ba60-rank0.pt"), "run_id": "new",
             "task": "t", "settings": "", "seed": 1},
            {"source": "hf", "path": str(tmp_path / "hf"), "task": "t", "settings": "", "seed": 1}]
    (out / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = drop_stale(out, read_results(out))
    assert [r["source"] for r in kept] == ["run/ep0-ba60", "hf"] == \
        [r["source"] for r in read_results(out)]
    assert not (out / "models" / "run__ep0-ba600").exists()
    assert "dropped 1 results of an earlier run in the same folder" in capsys.readouterr().out
    assert drop_stale(out, kept) == kept and capsys.readouterr().out == ""
