"""End to end on CPU: tiny runs of a few steps on the sample corpus through the real Trainer.

Covers: loss falls and an HF folder is written; exact resume (2N straight == N + resume N);
SIGKILL during a checkpoint write then autoresume; an s3:// save_folder on a loopback moto
server; `composer -n 2` with ranks seeing different data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
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


def args(corpus: Path, folder, *extra: str) -> list[str]:
    """Fast, deterministic settings: fp32, no eval until asked, no HF export unless asked."""
    return [TINY, f"data_dir={corpus}", f"save_folder={folder}", "run_name=t",
            "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
            "export.hf_folder=null", "trainer.console_log_interval=1000ba", *extra]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(str(folder / "metrics.jsonl"))}


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    """12 uninterrupted steps, checkpoint at 6 and 12: the reference for the resume tests."""
    folder = tmp_path_factory.mktemp("straight")
    assert main(args(corpus, folder, "max_duration=12ba", "save_interval=6ba")) == 0
    return folder


def test_tiny_run_loss_falls_and_writes_hf_folder(corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert main(args(corpus, tmp_path, "max_duration=40ba", "save_interval=40ba",
                     "eval_interval=40ba", "export.hf_folder=hf",
                     "loggers.wandb.enabled=true", "loggers.wandb.mode=offline")) == 0
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert all({"tokens", "loss", "lr", "l2_norm/grad/global", "throughput/tokens_per_sec",
                "data/packing_efficiency"} <= r.keys() for r in rows)
    first, last = (sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < first - 0.5, (first, last)
    assert rows[-1]["tokens"] > rows[0]["tokens"] > 0 and "metrics/eval/MaskedLoss" in rows[-1]
    assert rows[0]["data/packing_efficiency"] > 0.9
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.model_type == "modernbert" and tok.mask_token == "[MASK]"
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb offline run missing"
    assert not (tmp_path / "wandb" / "wandb").exists()  # <save_folder>/wandb, as docs say


def test_resume_is_exact_and_skips_no_batches(corpus, straight, tmp_path):
    """6 steps, stop, autoresume to 12: per-step losses and final weights equal the straight run.
    A replayed or skipped batch would change the losses from step 7 on."""
    assert main(args(corpus, tmp_path, "max_duration=6ba", "save_interval=6ba")) == 0
    start = time.time()
    assert main(args(corpus, tmp_path, "max_duration=12ba", "save_interval=6ba",
                     "autoresume=true")) == 0
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    first_new = next(r for r in rows if r["step"] == 7)
    print(f"resume: time to first new step {first_new['time'] - start:.2f}s")
    assert losses(tmp_path) == losses(straight)
    assert_same_weights(tmp_path / "ep0-ba12-rank0.pt", straight / "ep0-ba12-rank0.pt")


KILLER = textwrap.dedent("""
    import os, signal, sys
    import composer.utils.checkpoint as ck
    original, calls = ck._write_checkpoint_file, [0]
    def write_then_die(state_dict, filename):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_ON_WRITE"]):
            with open(filename, "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(state_dict, filename)
    ck._write_checkpoint_file = write_then_die
    from flexbert.train.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_during_checkpoint_write_then_autoresume(corpus, straight, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    folder = tmp_path / "run"
    run_args = args(corpus, folder, "max_duration=12ba", "save_interval=3ba", "autoresume=true")
    env = dict(os.environ, KILL_ON_WRITE="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script), *run_args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (folder / "ep0-ba9-rank0.pt").read_bytes() == b"half a checkpoint"
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba6-rank0.pt"
    assert main(run_args) == 0
    assert losses(folder) == losses(straight)
    assert_same_weights(folder / "ep0-ba12-rank0.pt", straight / "ep0-ba12-rank0.pt")


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"])
    client.create_bucket(Bucket="ckpt")
    yield client
    server.stop()


def test_s3_save_folder_saves_and_autoresumes(corpus, straight, s3, tmp_path, monkeypatch):
    """Each run starts in an empty working directory, so the resume must come from S3."""
    run_args = args(corpus, "s3://ckpt/runs/t", "save_interval=3ba", "autoresume=true")
    monkeypatch.chdir(tmp_path / "first" if (tmp_path / "first").mkdir() is None else tmp_path)
    assert main([*run_args, "max_duration=6ba"]) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="ckpt")["Contents"]}
    assert {"runs/t/ep0-ba3-rank0.pt", "runs/t/ep0-ba6-rank0.pt", "runs/t/latest-rank0.pt.symlink",
            "runs/t/metrics.jsonl"} <= keys
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "second")
    assert main([*run_args, "max_duration=12ba"]) == 0
    local = tmp_path / "second" / "runs" / "t" / "metrics.jsonl"
    assert losses(local.parent) == losses(straight)


RECORDER = textwrap.dedent("""
    import hashlib, os, sys
    from composer.core import Callback
    import flexbert.train.builder as builder

    class RecordBatches(Callback):
        def after_dataloader(self, state, logger):
            digest = hashlib.sha1(state.batch["input_ids"].numpy().tobytes()).hexdigest()
            with open(os.path.join(os.environ["RECORD_DIR"], f"rank{os.environ['RANK']}"), "a") as f:
                f.write(digest + "\\n")

    original = builder.build_callbacks
    builder.build_callbacks = lambda *a: original(*a) + [RecordBatches()]
    from flexbert.train.main import main
    sys.exit(main(sys.argv[1:]))
""")


def launch_two(script: Path, env: dict, *run_args: str) -> None:
    proc = subprocess.run(["composer", "-n", "2", str(script), *run_args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_composer_launcher_two_cpu_ranks_see_different_data_and_resume(corpus, tmp_path):
    """`composer -n 2` on CPU (gloo): disjoint batches per rank, one metrics.jsonl, the HF
    folder; then 2 steps + autoresume to 4 reproduces the straight 4-step losses (each rank's
    loader position is in rank 0's checkpoint)."""
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    env = dict(os.environ, RECORD_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    launch_two(script, env, *args(corpus, tmp_path / "run", "max_duration=4ba",
                                  "save_interval=4ba", "export.hf_folder=hf"))
    rank0 = (tmp_path / "rank0").read_text().split()
    rank1 = (tmp_path / "rank1").read_text().split()
    assert len(rank0) == len(rank1) == 4
    assert not set(rank0) & set(rank1)
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "ep0-ba4-rank0.pt").exists()
    assert (tmp_path / "run" / "hf" / "model.safetensors").exists()
    resumed = args(corpus, tmp_path / "resumed", "save_interval=2ba", "autoresume=true")
    launch_two(script, env, *resumed, "max_duration=2ba")
    launch_two(script, env, *resumed, "max_duration=4ba")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "run")


def test_microbatching_weights_by_masked_tokens(corpus, tmp_path):
    """Gradient accumulation over 4-row microbatches gives the whole-batch step: the loss is
    weighted by masked tokens per microbatch, not averaged per microbatch."""
    runs = {}
    for micro in (4, 32):
        folder = tmp_path / f"micro{micro}"
        assert main(args(corpus, folder, "max_duration=3ba", "save_interval=3ba",
                         f"trainer.device_train_microbatch_size={micro}")) == 0
        runs[micro] = folder
    a, b = losses(runs[4]), losses(runs[32])
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a), (a, b)
    wa, wb = weights(runs[4] / "ep0-ba3-rank0.pt"), weights(runs[32] / "ep0-ba3-rank0.pt")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_gpu_settings_do_not_break_a_cpu_run(corpus, tmp_path):
    """bf16, compile and FSDP come from the base recipe; on CPU they degrade (logged) instead of
    failing, while clipping and microbatching stay active."""
    assert main(args(corpus, tmp_path, "max_duration=2ba", "save_interval=2ba",
                     "trainer.precision=amp_bf16", "trainer.compile=true",
                     "trainer.fsdp={sharding_strategy: FULL_SHARD}", "trainer.grad_clip_norm=0.01",
                     "trainer.device_train_microbatch_size=4")) == 0
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["l2_norm/grad/global"] > 0.01  # logged before clipping


def test_new_phase_takes_lr_and_decay_from_the_recipe(corpus, straight, tmp_path):
    """load_path + reset_time: the clock restarts at step 1, weights and optimizer moments come
    from the checkpoint, and the recipe's LR / weight decay replace the checkpoint's."""
    assert main(args(corpus, tmp_path, f"load_path={straight / 'ep0-ba6-rank0.pt'}",
                     "reset_time=true", "max_duration=2ba", "save_interval=2ba",
                     "optimizer.lr=5e-4", "optimizer.weight_decay=1e-4",
                     "scheduler.t_warmup=0tok")) == 0
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["lr"] == pytest.approx(5e-4)
    ckpt = torch.load(tmp_path / "ep0-ba2-rank0.pt", map_location="cpu", weights_only=False)
    (state,) = ckpt["state"]["optimizers"].values()  # the recipe's one optimizer
    groups = state["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert all(g["max_lr"] == 5e-4 for g in groups)
    # Same first batch as the straight run's step 1 (the data position was reset too), but the
    # weights are the checkpoint's, not a fresh init, so the loss differs.
    assert abs(rows[0]["loss"] - losses(straight)[1]) > 1e-3
