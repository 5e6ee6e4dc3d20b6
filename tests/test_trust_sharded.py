"""Issue 22, point 1: a sharded (torch.distributed.checkpoint) folder never runs code.

The folders are written here with DCP itself (one process, no process group): a genuine
`.metadata` with one hostile byte item, and a hostile `.metadata`. Every entry point (the reader,
`load_path`, autoresume through `latest-rank0.pt`, `model.init_from`, publish) refuses with exit
2 naming the file, and the payload (touching a marker file) never runs. The Composer / torch
loaders themselves are guarded too (`guard_composer_loads`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from flexbert.io.checkpoint_reader import (Stub, UnsafeCheckpoint, guard_composer_loads,
                                        load_checkpoint_state)
from flexbert.cli import main as cli
from flexbert.train.main import main
from tests.helpers import Evil

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


class Foreign:
    def __init__(self):
        self.value = 3


def write_sharded(folder: Path, run_name) -> Path:
    """A Composer-shaped sharded checkpoint: state.model tensors and a byte item `run_name`."""
    state = {"state": {"model": {"model.x": torch.zeros(4)}, "run_name": run_name,
                       "timestamp": {"Timestamp": {"batch": 1}}}}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def hostile_item(tmp_path, marker) -> Path:
    return write_sharded(tmp_path / "ckpt-item", Evil(marker))


@pytest.fixture
def hostile_metadata(tmp_path, marker) -> Path:
    folder = write_sharded(tmp_path / "ckpt-meta", "run")
    (folder / ".metadata").write_bytes(pickle.dumps({"x": Evil(marker)}))
    return folder


@pytest.fixture
def restore_loaders(monkeypatch):
    """guard_composer_loads patches process-wide; put the originals back after the test."""
    from composer.utils import checkpoint as composer_checkpoint
    from torch.distributed.checkpoint import default_planner, filesystem

    for owner, name in [(filesystem.FileSystemReader, "read_metadata"),
                        (default_planner.DefaultLoadPlanner, "load_bytes"),
                        (composer_checkpoint, "_torch_load_with_validation")]:
        monkeypatch.setattr(owner, name, getattr(owner, name))


def test_reader_refuses_a_hostile_byte_item_and_trust_makes_it_a_stub(hostile_item, tmp_path,
                                                                       marker):
    with pytest.raises(UnsafeCheckpoint, match=r"__0_0\.distcp: item state\.run_name.*"
                                               r"posix\.system.*trust_checkpoint"):
        load_checkpoint_state(hostile_item)
    with pytest.raises(UnsafeCheckpoint, match="even with trust_checkpoint"):
        load_checkpoint_state(hostile_item, trust=True)
    foreign = write_sharded(tmp_path / "foreign", Foreign())
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint_state(foreign)
    stub = load_checkpoint_state(foreign, trust=True)["run_name"]
    assert isinstance(stub, Stub) and stub.origin.endswith(".Foreign")
    assert not marker.exists()


def test_composer_and_torch_loaders_are_guarded(hostile_item, hostile_metadata, marker,
                                                restore_loaders):
    """What Composer calls for a sharded load_path / autoresume: its FileSystemReader's
    read_metadata (plain pickle) and torch's load planner (weights_only=False)."""
    from composer.utils.checkpoint import FileSystemReaderWithValidation

    guard_composer_loads(trust=False)
    with pytest.raises(UnsafeCheckpoint, match=r"ckpt-meta/\.metadata"):
        FileSystemReaderWithValidation(str(hostile_metadata)).read_metadata()
    with pytest.raises(UnsafeCheckpoint, match=r"item state\.run_name"):
        FileSystemReaderWithValidation(str(hostile_item)).read_metadata()
    target = {"state": {"model": {"model.x": torch.ones(4)}, "run_name": "",
                        "timestamp": {"Timestamp": {"batch": 0}}}}
    with pytest.raises(BaseException) as caught:  # DCP wraps it (CheckpointException)
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(hostile_item)), no_dist=True)
    assert "item state.run_name: refusing to load" in str(caught.getrepr())
    planner = dcp.DefaultLoadPlanner()  # the byte items alone, should a reader skip the check
    planner.set_up_planner(target, None, True)
    with pytest.raises(UnsafeCheckpoint, match=r"item state\.run_name.*posix\.system"):
        planner.load_bytes(_read_item("state.run_name"), _item_bytes(hostile_item))
    assert not marker.exists()


def _read_item(fqn: str):
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    index = MetadataIndex(fqn)
    return ReadItem(LoadItemType.BYTE_IO, index, [0], index, [0], [0])


def _item_bytes(folder: Path):
    import io

    from flexbert.io.sharded import _MetadataUnpickler

    meta = _MetadataUnpickler(open(folder / ".metadata", "rb")).load()
    info = next(v for k, v in meta.storage_data.items() if k.fqn == "state.run_name")
    with open(folder / info.relative_path, "rb") as f:
        f.seek(info.offset)
        return io.BytesIO(f.read(info.length))


@pytest.mark.parametrize("how", ["load_path", "init_from", "autoresume", "latest_elsewhere"])
def test_training_refuses_hostile_sharded_folders(how, hostile_item, hostile_metadata, marker,
                                                  sample_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    extra, named = [], hostile_item
    if how == "load_path":
        extra = [f"load_path={hostile_item}"]
    elif how == "init_from":
        extra = [f"model.init_from={hostile_item}"]
    else:  # autoresume: latest-rank0.pt names a sharded folder with a hostile .metadata
        target = hostile_metadata
        if how == "autoresume":
            target = run / "ep0-ba1"
            hostile_metadata.rename(target)
        (run / "latest-rank0.pt").symlink_to(target)
        extra, named = ["autoresume=true"], target / ".metadata"
    rc = main([TINY, f"data_dir={sample_corpus}", f"save_folder={run}", "max_duration=2ba",
               *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(named) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    assert not list(run.glob("ep*-rank0.pt"))


@pytest.mark.parametrize("argv", [["publish", "{src}", "{tmp}/out"],
                                  ["average", "{src}", "{src}", "{tmp}/avg.pt"]])
def test_commands_refuse_hostile_sharded_folders(argv, hostile_item, marker, tmp_path, capsys):
    assert cli([a.format(src=hostile_item, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "item state.run_name" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
