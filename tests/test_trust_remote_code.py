"""Issue 22, point 2: a tokenizer or model folder that ships its own Python code is refused.

The hostile folders are written here: a real tokenizer whose `tokenizer_config.json` names an
unknown `tokenizer_class` and an `auto_map` pointing at `evil.py` (which touches a marker file
when imported), and a model folder whose `config.json` has an `auto_map`. transformers would ask
"Do you wish to run the custom code? [y/N]"; the test answers "y" for the user, so on the old
code the module is imported and the marker appears. Every entry point must refuse instead:
exit 2, one line naming the file and the key, no marker."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest

from flexbert.config import ConfigError
from flexbert.train.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(autouse=True)
def user_says_yes(monkeypatch):
    """The [y/N] prompt answered y: what an unlucky user at a terminal does."""
    monkeypatch.setattr(builtins, "input", lambda *args, **kwargs: "y")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


def _plant_code(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")


@pytest.fixture
def hostile_tokenizer(sample_corpus, tmp_path, marker) -> Path:
    folder = tmp_path / "tok"
    shutil.copytree(sample_corpus / "tokenizer", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer",
                  auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _plant_code(folder, marker)
    return folder


def test_tokenizer_folder_with_auto_map_is_refused_by_name(hostile_tokenizer, marker):
    from flexbert.io.checkpoint_reader import load_tokenizer_safely

    with pytest.raises(ConfigError, match=r"tok/tokenizer_config\.json: auto_map"):
        load_tokenizer_safely(hostile_tokenizer)
    config_path = hostile_tokenizer / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["auto_map"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"tokenizer_config\.json: tokenizer_class: 'EvilTokenizer'"):
        load_tokenizer_safely(hostile_tokenizer)
    assert not marker.exists()


def test_training_refuses_a_hostile_data_tokenizer(hostile_tokenizer, marker, sample_corpus,
                                                   tmp_path, capsys):
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
               "max_duration=2ba", f"data.tokenizer={hostile_tokenizer}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "tokenizer_config.json: auto_map" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_model_folder_with_auto_map_is_refused(sample_corpus, tmp_path, marker, capsys):
    """model.init_from=<transformers folder> whose config.json asks for its own model code."""
    folder = tmp_path / "hfmodel"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilbert", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForMaskedLM": "evil.EvilModel"}}))
    _plant_code(folder, marker)
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
               "max_duration=2ba", "model.preset=null", f"model.init_from={folder}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "hfmodel/config.json: auto_map" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_finetune_and_publish_refuse_a_hostile_tokenizer(hostile_tokenizer, marker, tmp_path):
    """The same check sits in every loader (publish's, finetune's, import-modernbert's)."""
    from flexbert.finetune.loading import load_tokenizer as finetune_tokenizer
    from flexbert.interop.modernbert_config import tokenizer_ids
    from flexbert.io.publish import load_tokenizer as publish_tokenizer

    for load in (lambda: finetune_tokenizer(str(tmp_path), str(hostile_tokenizer)),
                 lambda: publish_tokenizer(str(hostile_tokenizer)),
                 lambda: tokenizer_ids(str(hostile_tokenizer))):
        with pytest.raises(ConfigError, match=r"tokenizer_config\.json: auto_map"):
            load()
    assert not marker.exists()
