"""FSDP2 on CPU (2 gloo ranks through `composer -n 2`) against DDP: the same per-step losses and
gradient norms; a sharded checkpoint that reads back into one process whole; the end-of-run HF
export and the Publish callback gather the shards into folders transformers loads.

One DDP and one FSDP2 launch, shared by every test here."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from flexbert.io.checkpoint_reader import load_checkpoint_state
from flexbert.io.sharded import read_sharded_checkpoint
from flexbert.runtime.metrics_file import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS = 10


def run_args(corpus: Path, folder: Path, *extra: str) -> list[str]:
    """fp32, no batch-size warmup, the same optimizer for both runs (stable_adamw needs an AVG
    all-reduce that gloo lacks under FSDP2)."""
    return [str(REPO / "configs" / "tiny.yaml"), f"data_dir={corpus}", f"save_folder={folder}",
            "run_name=t", f"max_duration={STEPS}ba", f"save_interval={STEPS}ba",
            "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32", "trainer.progress_bar=false",
            "trainer.console_log_interval=1000ba", "batch.warmup_start=null",
            "optimizer.name=decoupled_adamw", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(sample_corpus, tmp_path_factory) -> dict[str, Path]:
    from test_eval import write_classification

    root = tmp_path_factory.mktemp("fsdp")
    folders = {"ddp": root / "ddp", "fsdp": root / "fsdp"}
    task = write_classification(root / "tasks" / "banana", n_train=32, n_dev=16)
    downstream = ["callbacks.downstream_eval.enabled=true", f"callbacks.downstream_eval.tasks=[{task}]",
                  "callbacks.downstream_eval.seeds=[1]", "callbacks.downstream_eval.wait_at_end=300",
                  "callbacks.downstream_eval.options={epochs: 1, max_seq_len: 32, batch_size: 16, "
                  "precision: fp32}"]
    extra = {"ddp": ["export.hf_folder=null"],
             "fsdp": ["trainer.fsdp.version=2", "trainer.fsdp.state_dict_type=sharded",
                      "trainer.activation_checkpointing=2", "export.hf_folder=hf",
                      "callbacks.publish.enabled=true", *downstream]}
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # 2 ranks on 2 cores
    for name, folder in folders.items():  # one at a time: Streaming's shared memory is per host
        proc = subprocess.run(
            ["composer", "-n", "2", "--master_port", str(free_port()), str(REPO / "train.py"),
             *run_args(sample_corpus, folder, *extra[name])],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name} run failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return folders


def test_fsdp2_steps_match_ddp(runs):
    ddp = read_metrics(str(runs["ddp"] / "metrics.jsonl"))
    fsdp = read_metrics(str(runs["fsdp"] / "metrics.jsonl"))
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == list(range(1, STEPS + 1))
    for a, b in zip(ddp, fsdp):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
        # GradNorm on DTensor shards, and gradients averaged over ranks as DDP does
        gn_a, gn_b = a["l2_norm/grad/global"], b["l2_norm/grad/global"]
        assert abs(gn_a - gn_b) <= 1e-5 * gn_a, (a["step"], gn_a, gn_b)


def test_sharded_checkpoint_reads_back_whole(runs):
    folder = runs["fsdp"] / f"ep0-ba{STEPS}"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = read_sharded_checkpoint(folder)
    full = load_checkpoint_state(runs["ddp"] / f"ep0-ba{STEPS}-rank0.pt")
    assert state["model"].keys() == full["model"].keys()  # the names a .pt checkpoint uses
    for key, value in full["model"].items():
        assert state["model"][key].shape == value.shape, key
        assert torch.allclose(state["model"][key], value, atol=1e-5), key
    assert state["timestamp"]["Timestamp"]["batch"] == STEPS
    assert state["callbacks"]["PhaseInfo"]["model_config"]  # what `flexbert publish` needs


def test_gathered_hf_folders_load_in_transformers(runs):
    """export_hf and the Publish callback gather the shards on rank 0: both folders hold the
    same weights as the sharded checkpoint of the same step, tensor for tensor."""
    from transformers import AutoModelForMaskedLM

    from flexbert.io.hf import from_transformers

    weights = {k.removeprefix("model."): v
               for k, v in read_sharded_checkpoint(runs["fsdp"] / f"ep0-ba{STEPS}")["model"].items()}
    published = list((runs["fsdp"] / "published").iterdir())
    assert len(published) == 1
    for hf_dir in (runs["fsdp"] / "hf", published[0]):
        model = from_transformers(AutoModelForMaskedLM.from_pretrained(hf_dir))
        for key, value in model.state_dict().items():
            assert torch.equal(value, weights[key]), (hf_dir, key)


def test_downstream_snapshot_is_gathered_under_fsdp2(runs):
    """callbacks.downstream_eval under FSDP2: every rank gathers, rank 0 writes the snapshot (it
    used to call state_dict() on rank 0 alone: a hang under FSDP v1, DTensors under FSDP2), the
    run finishes, the snapshot holds the run's final weights as its HF export does, and its
    evaluation ran and was logged at the snapshot's step."""
    from transformers import AutoModelForMaskedLM

    snapshot = runs["fsdp"] / "downstream" / f"step{STEPS}" / "model"
    ours = AutoModelForMaskedLM.from_pretrained(snapshot).state_dict()
    export = AutoModelForMaskedLM.from_pretrained(runs["fsdp"] / "hf").state_dict()
    assert ours.keys() == export.keys()
    for key, value in export.items():
        assert torch.equal(ours[key], value), key
    row = read_metrics(str(runs["fsdp"] / "metrics.jsonl"))[-1]
    assert row["step"] == STEPS and "downstream/banana/accuracy" in row, sorted(row)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_sharded_reader_refuses_foreign_pickles(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(ValueError, match=r"\.metadata: not a readable sharded-checkpoint index"):
        read_sharded_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no .metadata file"):
        read_sharded_checkpoint(tmp_path / "missing")


def test_fsdp_keys_map_to_composer_configs():
    from composer.utils.parallelism import FSDP2Config, FSDPConfig

    from flexbert.train.recipe.schema import FsdpConfig
    from flexbert.train.distributed.fsdp import composer_fsdp

    v2 = composer_fsdp(FsdpConfig(version=2, sharding_strategy="SHARD_GRAD_OP",
                                  state_dict_type="sharded"), "cpu")
    assert isinstance(v2, FSDP2Config)
    assert v2.reshard_after_forward is False and v2.state_dict_type == "sharded"
    v1 = composer_fsdp(FsdpConfig(sharding_strategy="HYBRID_SHARD", cpu_offload=True), "gpu")
    assert isinstance(v1, FSDPConfig) and v1.sharding_strategy == "HYBRID_SHARD" and v1.cpu_offload
    assert composer_fsdp(FsdpConfig(), "cpu") is None  # v1 cannot run on CPU: DDP instead


@pytest.mark.parametrize("override, message", [
    ("trainer.fsdp.version=3", r"trainer\.fsdp\.version: 3; allowed: 1, 2"),
    ("trainer.fsdp.sharding_strategy=HYBRID_SHARD", r"trainer\.fsdp\.sharding_strategy: 'HYBRID"),
    ("trainer.fsdp.cpu_offload=true", r"trainer\.fsdp\.cpu_offload: exists only in FSDP version 1"),
    ("trainer.activation_checkpointing=-1", r"trainer\.activation_checkpointing: 0 \(off\)"),
])
def test_bad_fsdp_keys_are_named(override, message):
    from flexbert.config import ConfigError
    from flexbert.train.recipe.load import load_recipe

    with pytest.raises(ConfigError, match=message):
        load_recipe(REPO / "configs" / "tiny.yaml", ["data_dir=x", "trainer.fsdp.version=2",
                                                     "optimizer.name=decoupled_adamw", override])


def test_sharded_checkpoint_publishes_averages_and_inits(runs, tmp_path):
    """The one reader takes a sharded folder wherever a checkpoint is accepted: `flexbert
    publish`, `flexbert average` (beside the DDP run's .pt) and `model.init_from`."""
    from transformers import AutoModelForMaskedLM

    from flexbert.io.checkpoint_reader import read_source
    from flexbert.cli import main as cli
    from flexbert.io.hf import from_transformers

    sharded, full = runs["fsdp"] / f"ep0-ba{STEPS}", runs["ddp"] / f"ep0-ba{STEPS}-rank0.pt"
    source = read_source(str(sharded))
    assert source.kind == "sharded" and source.config is not None
    assert cli(["publish", str(sharded), str(tmp_path / "pub")]) == 0
    published = from_transformers(AutoModelForMaskedLM.from_pretrained(tmp_path / "pub"))
    for key, value in published.state_dict().items():
        if "inv_freq" not in key:
            assert torch.equal(value, source.weights[key]), key
    assert cli(["average", str(sharded), str(full), str(tmp_path / "avg.pt")]) == 0
    mean = read_source(str(tmp_path / "avg.pt")).weights
    other = read_source(str(full)).weights
    key = "model.layers.0.mlp.Wi.weight"
    assert torch.allclose(mean[key], (source.weights[key] + other[key]) / 2, atol=1e-6)
    from flexbert.model import FlexBertForMaskedLM
    from flexbert.train.checkpointing.init_from import load_init_weights

    model = FlexBertForMaskedLM(source.config)
    load_init_weights(model, str(sharded))
    assert torch.equal(model.state_dict()[key], source.weights[key])
