"""No checkpoint can run code: a pickle whose `__reduce__` writes a marker file is refused by every
entry point (the reader, `flexbert publish`, `flexbert average`, `model.init_from=`, `load_path=`),
exit 2 naming the file, and the marker never appears. A real checkpoint still loads safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexbert.io.checkpoint_reader import (UnreadableCheckpoint, UnsafeCheckpoint, load_checkpoint,
                                        load_checkpoint_state, read_source)
from flexbert.cli import main as cli
from flexbert.train.main import main
from tests.helpers import Evil

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"state": {"model": {"model.x": torch.zeros(2)},
                          "callbacks": {"PhaseInfo": {"payload": Evil(marker)}}}}, path)
    return path, marker


def test_reader_refuses_a_pickle_that_runs_code(evil):
    path, marker = evil
    for read in (load_checkpoint, load_checkpoint_state, read_source):
        with pytest.raises(UnsafeCheckpoint, match=r"evil\.pt.*posix\.system.*trust_checkpoint"):
            read(path)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [["publish", "{evil}", "{tmp}/out"],
                                  ["average", "{evil}", "{evil}", "{tmp}/avg.pt"]])
def test_commands_refuse_it(evil, tmp_path, capsys, argv):
    path, marker = evil
    assert cli([a.format(evil=path, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--trust-checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", [["model.preset=null", "model.init_from={evil}"],
                                   ["model.init_from={evil}"],
                                   ["load_path={evil}"]])
def test_training_refuses_it(evil, sample_corpus, tmp_path, capsys, extra):
    path, marker = evil
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
               "max_duration=2ba", *[e.format(evil=path) for e in extra]])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(path) in err and "trust_checkpoint=true" in err
    assert not marker.exists()
    assert not list((tmp_path / "run").glob("*.pt")) if (tmp_path / "run").exists() else True


class Foreign:
    """A class of another code base: with the opt-in it loads as an inert stub."""

    def __init__(self):
        self.value = 3


def test_trust_opt_in_loads_foreign_classes_as_stubs_and_never_runs_code(evil, tmp_path):
    from flexbert.io.checkpoint_reader import Stub

    foreign = tmp_path / "foreign.pt"
    torch.save({"state": {"model": {"model.x": torch.ones(2)}, "callbacks": {"x": Foreign()}}},
               foreign)
    with pytest.raises(UnsafeCheckpoint, match="trust_checkpoint=true"):
        load_checkpoint(foreign)
    state = load_checkpoint(foreign, trust=True)["state"]
    stub = state["callbacks"]["x"]
    assert isinstance(stub, Stub) and stub.origin.endswith(".Foreign")
    assert stub.state == {"value": 3} and torch.equal(state["model"]["model.x"], torch.ones(2))
    path, marker = evil  # a global from a module that runs code is refused even when trusted
    with pytest.raises(UnsafeCheckpoint, match=r"even with trust_checkpoint.*posix\.system"):
        load_checkpoint(path, trust=True)
    assert not marker.exists()


def test_truncated_and_empty_checkpoints_are_named(tmp_path, sample_corpus, capsys):
    cut = tmp_path / "cut.pt"
    good = tmp_path / "good.pt"
    torch.save({"state": {"model": {"model.w": torch.ones(64)}}}, good)
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UnreadableCheckpoint, match=r"cut\.pt: truncated"):
        load_checkpoint_state(cut)
    empty = tmp_path / "empty.pt"
    torch.save({"state": {"model": {}}}, empty)
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
               "max_duration=2ba", f"load_path={empty}"])
    assert rc == 2 and "empty.pt: load_path: the checkpoint holds no model weights" in \
        capsys.readouterr().err


def test_local_looking_init_from_typo_is_one_line(sample_corpus, tmp_path, capsys):
    """A missing local path is named at once; nothing is asked of the Hub."""
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path}", "model.preset=null",
               f"model.init_from={tmp_path}/no-such-model"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.init_from" in err and "no such file or folder" in err
