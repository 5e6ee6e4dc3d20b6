"""Issue 22, points 7 and 8: expected failures are one line naming the file or key, exit 2, no
traceback; import-modernbert's outputs and the recipe defaults build."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from flexbert.cli import main as cli
from flexbert.train.main import main
from tests.helpers import Evil

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_override_yaml_syntax_error_names_the_override(sample_corpus, tmp_path, capsys):
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path}",
               "model.num_layers=[1,2"])
    assert rc == 2 and "bad override 'model.num_layers=[1,2'" in one_line(capsys)


def test_from_hf_without_safetensors_is_one_line(tmp_path, capsys):
    folder = tmp_path / "binonly"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "modernbert"}')
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert cli(["from-hf", str(folder), str(tmp_path / "out")]) == 2
    line = one_line(capsys)
    assert str(folder) in line and "model.safetensors" in line


def test_import_modernbert_trust_on_a_blocked_module(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    src = tmp_path / "evil.pt"
    torch.save({"state": {"model": {"x": torch.zeros(1)}, "run_name": Evil(marker)}}, src)
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(tmp_path / "o.pt"),
                "--trust-checkpoint"]) == 2
    line = one_line(capsys)
    assert str(src) in line and "even with --trust-checkpoint" in line and "posix.system" in line
    assert not marker.exists()


def test_import_modernbert_refuses_empty_yaml_and_bad_times(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli(["import-modernbert", "--yaml", str(empty), "--recipe", str(tmp_path / "r.yaml")]) == 2
    assert f"{empty}: the file is empty" in one_line(capsys)
    nomodel = tmp_path / "nomodel.yaml"
    nomodel.write_text("max_duration: 10ba\n")
    assert cli(["import-modernbert", "--yaml", str(nomodel), "--recipe", str(tmp_path / "r.yaml")]) == 2
    assert f"{nomodel}: model: missing" in one_line(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_duration: [1, 2]\nmodel:\n  name: flex_bert\n")
    assert cli(["import-modernbert", "--yaml", str(bad), "--recipe", str(tmp_path / "r.yaml")]) == 2
    assert f"{bad}: max_duration: [1, 2]" in one_line(capsys)
    bad.write_text("scheduler:\n  name: constant_with_warmup\n  t_warmup: [1]\nmodel:\n  name: flex_bert\n")
    assert cli(["import-modernbert", "--yaml", str(bad), "--recipe", str(tmp_path / "r.yaml"),
                "--tokenizer", "unused-because-vocab-fits"]) == 2
    line = one_line(capsys)
    assert "scheduler.t_warmup" in line or "unused-because-vocab-fits" in line
    assert not (tmp_path / "r.yaml").exists()


def test_non_utf8_task_file_is_named(tmp_path):
    from flexbert.finetune.files import read_conll, read_table

    for name, read in (("task.jsonl", read_table), ("task.csv", read_table),
                       ("task.conll", read_conll)):
        path = tmp_path / name
        path.write_bytes(b'{"text": "caf\xe9"}\n')
        with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text \(byte \d+"):
            read(path)


def test_commands_without_the_opt_in_advise_what_exists():
    from flexbert.io.trust import UnsafeCheckpoint, _unsafe_message
    from flexbert.cli import _advice

    err = UnsafeCheckpoint(_unsafe_message("ck.pt", ValueError("GLOBAL x.Y")))
    for command in ("finetune", "eval"):
        line = _advice(argparse.Namespace(command=command), err)
        assert line.startswith("ck.pt: refusing to load") and f"`flexbert {command}` has no" in line
        assert "flexbert publish CHECKPOINT OUT --trust-checkpoint" in line
    assert _advice(argparse.Namespace(command="publish", trust=False), err) == str(err)


def test_init_from_with_other_shapes_is_one_line(sample_corpus, tmp_path, capsys):
    src = tmp_path / "other.pt"
    torch.save({"state": {"model": {"model.embeddings.tok_embeddings.weight": torch.zeros(3, 3)}}},
               src)
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
               "max_duration=1ba", f"model.init_from={src}"])
    line = one_line(capsys)
    assert rc == 2 and str(src) in line and "weights do not fit the model config" in line


def test_recipe_without_eval_subset_builds_and_minus_one_is_named(sample_corpus, tmp_path):
    """Point 7: the default is a number of batches (the eval stream has no end)."""
    from flexbert.config import ConfigError
    from flexbert.train.recipe.load import load_recipe

    import shutil

    shutil.copytree(REPO / "configs", tmp_path / "configs")  # the recipe names model/*.yaml
    recipe = tmp_path / "configs" / "tiny.yaml"
    text = recipe.read_text()
    recipe.write_text("\n".join(l for l in text.splitlines() if "eval_subset_num_batches" not in l))
    cfg = load_recipe(str(recipe), [f"data_dir={sample_corpus}"]).cfg
    assert cfg.trainer.eval_subset_num_batches == 100
    with pytest.raises(ConfigError, match="trainer.eval_subset_num_batches: -1"):
        load_recipe(str(recipe), [f"data_dir={sample_corpus}", "trainer.eval_subset_num_batches=-1"])


def test_bad_shard_in_a_loader_worker_is_one_line():
    """A worker's ShardError comes back wrapped with its traceback; the line is the message."""
    from torch._utils import ExceptionWrapper

    from flexbert.data.documents import ShardError, shard_error_line

    message = "data.streams.a: shard d/shard.00000.mds: sample 3 has token id 9999, outside ..."
    try:
        raise ShardError(message)
    except ShardError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ShardError) as caught:
        wrapped.reraise()
    assert str(caught.value).startswith("Caught ShardError")
    assert shard_error_line(caught.value) == message
    assert shard_error_line(ShardError(message)) == message
