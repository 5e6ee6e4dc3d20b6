"""Two "nodes" on one machine: two `composer` launchers of 2 processes each (--world_size 4
--nproc 2 --node_rank 0/1, one master), gloo, FSDP2 sharded over the 4 ranks, each node with its
own Streaming shard cache (data.cache_dir). The run matches a single-launcher 4-rank run step
for step (with activation checkpointing on in the two-node run only: recomputation must not
change a number), writes one sharded checkpoint from both nodes, and resumes from it on one node
of 2 ranks (elastic resume: the loader re-splits its state over 2 ranks).

A hybrid layout (shard inside a node, replicate across nodes) is not run here: Composer 0.32.1
builds it from FSDP2Config(device_mesh=<2-D mesh>), but FSDP2's replica all-reduce asks for
ReduceOp.AVG, which gloo refuses ("Cannot use ReduceOp.AVG with Gloo"); tests/test_grad_norm.py
checks what can be checked of it on CPU (the gradient norm over a 2 x 2 mesh)."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from flexbert.io.sharded import read_sharded_checkpoint
from flexbert.runtime.metrics_file import read_metrics
from test_fsdp import free_port

REPO = Path(__file__).resolve().parents[1]
STEPS = 4

pytestmark = pytest.mark.slow


def args(corpus: Path, folder: Path, *extra: str) -> list[str]:
    return [str(REPO / "train.py"), str(REPO / "configs" / "tiny.yaml"), f"data_dir={corpus}",
            f"save_folder={folder}", "run_name=mn", f"max_duration={STEPS}ba", "save_interval=2ba",
            "save_num_checkpoints_to_keep=-1", "eval_interval=1000ba", "trainer.precision=fp32",
            "trainer.progress_bar=false", "trainer.console_log_interval=1000ba",
            "batch.warmup_start=null", "optimizer.name=decoupled_adamw", "export.hf_folder=null",
            "trainer.fsdp.version=2", "trainer.fsdp.state_dict_type=sharded", *extra]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _check(proc, name: str, log: Path | None = None) -> None:
    out = log.read_text() if log is not None else proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed:\n{out[-4000:]}"


# Each "node" gets its own /dev/shm, as a real node has: Streaming's local leaders register their
# shared memory under a prefix agreed over a world barrier, so two nodes on one host would both
# create the same name (FileExistsError: '/0000NN_locals').
OWN_SHM = ["unshare", "--mount", "sh", "-c",
           'mount -t tmpfs -o size=1g tmpfs /dev/shm && exec "$@"', "node"]


def _can_give_nodes_their_own_shm() -> bool:
    try:
        return subprocess.run([*OWN_SHM, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def runs(sample_corpus, tmp_path_factory) -> dict[str, Path]:
    if not _can_give_nodes_their_own_shm():
        pytest.skip("needs `unshare --mount` (root or CAP_SYS_ADMIN) for a /dev/shm per node")
    root = tmp_path_factory.mktemp("multinode")
    folders = {name: root / name for name in ("single", "two_nodes", "resumed")}
    single = subprocess.run(["composer", "-n", "4", "--master_port", str(free_port()),
                             *args(sample_corpus, folders["single"],
                                   f"data.cache_dir={root / 'cache_single'}")],
                            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    _check(single, "single launcher, 4 ranks")
    port = free_port()

    def node(rank: int) -> subprocess.Popen:
        log = open(root / f"node{rank}.log", "w")  # a file: an unread pipe could fill and block
        return subprocess.Popen(
            [*OWN_SHM, "composer", "--world_size", "4", "--nproc", "2", "--node_rank", str(rank),
             "--master_addr", "127.0.0.1", "--master_port", str(port),
             *args(sample_corpus, folders["two_nodes"], f"data.cache_dir={root / f'cache_node{rank}'}",
                   "trainer.activation_checkpointing=1")],
            env=_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)

    nodes = [node(0), node(1)]
    for rank, launched in enumerate(nodes):
        launched.wait(timeout=900)
        _check(launched, f"node {rank} of 2", root / f"node{rank}.log")
    resumed = subprocess.run(
        ["composer", "-n", "2", "--master_port", str(free_port()),
         *args(sample_corpus, folders["resumed"], f"load_path={folders['two_nodes'] / 'ep0-ba2'}",
               f"data.cache_dir={root / 'cache_node0'}")],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    _check(resumed, "resume on one node, 2 ranks")
    return folders


def test_two_launchers_match_one_launcher_step_for_step(runs):
    single = read_metrics(str(runs["single"] / "metrics.jsonl"))
    nodes = read_metrics(str(runs["two_nodes"] / "metrics.jsonl"))
    assert [r["step"] for r in nodes] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(single, nodes):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
        assert a["l2_norm/grad/global"] == pytest.approx(b["l2_norm/grad/global"], rel=1e-5)


def test_each_node_used_its_own_shard_cache(runs):
    caches = [runs["two_nodes"].parent / f"cache_node{rank}" for rank in (0, 1)]
    for cache in caches:
        assert any(p.name.endswith(".mds") for p in cache.rglob("*")), cache


def test_both_nodes_wrote_one_sharded_checkpoint(runs):
    folder = runs["two_nodes"] / "ep0-ba2"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata"] + [
        f"__{r}_0.distcp" for r in range(4)]
    ours = read_sharded_checkpoint(folder)["model"]
    theirs = read_sharded_checkpoint(runs["single"] / "ep0-ba2")["model"]
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(ours[key], value, atol=1e-5), key


def test_elastic_resume_on_one_node_continues_the_run(runs):
    """2 ranks take over a 4-rank checkpoint: the clock continues at step 3 and the loss stays
    where the 4-rank run had it (same weights; the loader re-splits the remaining samples over 2
    ranks, so the batches, and the losses, are close but not identical)."""
    resumed = read_metrics(str(runs["resumed"] / "metrics.jsonl"))
    single = {r["step"]: r for r in read_metrics(str(runs["single"] / "metrics.jsonl"))}
    assert [r["step"] for r in resumed] == [3, 4]
    for row in resumed:
        assert math.isfinite(row["loss"])
        assert row["loss"] == pytest.approx(single[row["step"]]["loss"], rel=0.05), row["step"]
    assert (runs["resumed"] / f"ep0-ba{STEPS}" / ".metadata").is_file()
