"""`flexbert plan`: the meta-device activation measurement against real memory, the base figures
against a hand calculation, and the table/JSON for a recipe and the phases that follow it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flexbert.train.planning.activations import activation_bytes
from flexbert.train.recipe.load import load_recipe
from flexbert.train.planning.plan import GIB, parse_gpus, phase_figures, PhasePlan
from helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.mark.parametrize("padding", ["unpadded", "padded"])
def test_meta_measurement_equals_the_same_forward_on_real_tensors(padding):
    cfg = tiny_config(padding=padding, sparse_prediction=True)
    meta = activation_bytes(cfg, 3, 64, 0.3, "meta", torch.float32)
    real = activation_bytes(cfg, 3, 64, 0.3, "cpu", torch.float32)
    assert meta.total == real.total > 0
    assert meta.layers == real.layers and meta.checkpointed == real.checkpointed
    assert meta.checkpointed < meta.total


RSS_PROBE = textwrap.dedent("""
    import ctypes, gc, os, sys, torch
    ctypes.CDLL("libc.so.6").mallopt(-3, 32 * 1024)  # M_MMAP_THRESHOLD: big blocks map and unmap
    sys.path.insert(0, "tests")
    from helpers import tiny_config
    from flexbert.train.planning.activations import build_for_measurement, measure_activations, packed_batch
    libc = ctypes.CDLL("libc.so.6")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    cfg = tiny_config(padding="unpadded", sparse_prediction=True)
    model = build_for_measurement(cfg, "cpu", torch.float32)
    batch = packed_batch(8, 256, 0.3, cfg.vocab_size, "cpu")
    out = model(**batch); del out; gc.collect(); libc.malloc_trim(0)
    before = rss()
    out = model(**batch)
    libc.malloc_trim(0)
    held = rss() - before
    del out; gc.collect()
    print(held, measure_activations(model, batch).total)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's mallopt")
def test_measurement_matches_the_memory_a_real_fp32_forward_holds():
    """Independent of the hooks: the resident memory a real CPU forward keeps until its backward
    (glibc set to map every block >= 32 KiB, so freed temporaries leave RSS at once)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", RSS_PROBE], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    held, measured = map(int, out.stdout.split()[-2:])
    assert measured > 10 * 2**20
    assert abs(held - measured) / measured < 0.05, (held, measured)


def test_base_figures_match_a_hand_calculation():
    # configs/model/tiny.yaml: V=4096, d=64, 4 layers (0 and 3 global, window 16), GLU i=96,
    # layernorm without bias, layer 0 without attention norm, tied decoder with a bias.
    recipe = load_recipe(TINY, ["batch.warmup_start=null", "max_duration=1000000tok"])
    V, d, i, L = 4096, 64, 96, 4
    layer = 3 * d * d + d * d + d + d * 2 * i + i * d  # qkv, out, mlp norm, Wi (2i), Wo
    params = V * d + d + L * layer + (L - 1) * d + d + d * d + d + V  # + attn norms 1..3,
    assert params == 410240                                     # final norm, head, decoder bias
    # attention pairs per token of a 128-token row: global layers 128; local layers the exact
    # count in a +-8 window (edge tokens see fewer keys): (128 + 2 * (0+1+...+7 + 8 * 120)) / 128
    local = (128 + 2 * (sum(range(8)) + 8 * 120)) / 128
    assert local == 16.4375
    macs = L * (4 * d * d + 3 * d * i) + 2 * d * (128 + local + local + 128) + 0.3 * (d * d + d * V)
    assert macs == 256112
    plan = PhasePlan(recipe=str(TINY), phase="tiny")
    gpus = parse_gpus("1xH100")
    phase_figures(plan, recipe, gpus, mfu=0.5)
    assert plan.parameters == params
    assert plan.optimizer_state_bytes == params * 8  # optimi AdamW (tiny's): two fp32 moments
    assert plan.state_bytes == params * 16           # + fp32 weights and gradients
    assert plan.flops_per_token == pytest.approx(6 * macs) and round(6 * macs) == 1_536_672
    assert plan.steps == 245 and plan.tokens == 245 * 32 * 128  # ceil(1e6 / 4096) full steps
    assert plan.gpu_hours == pytest.approx(245 * 4096 * 1_536_672 / (989.4e12 * 0.5) / 3600)
    assert plan.max_microbatch == plan.max_microbatch_checkpointed == 32  # the whole batch fits
    assert gpus.memory_bytes == 80 * GIB


def test_batch_warmup_adds_steps():
    # 800 steps, rows 8 -> 32 over the first 200k tokens (tiny's warmup, set explicitly)
    recipe = load_recipe(TINY, ["batch.warmup_start=8", "batch.warmup_tokens=200000"])
    plan = PhasePlan(recipe=str(TINY), phase="tiny")
    phase_figures(plan, recipe, parse_gpus("1xH100"), mfu=0.5)
    assert plan.steps == 800 and plan.tokens < 800 * 32 * 128


def test_plan_prints_every_phase_and_writes_json(tmp_path, monkeypatch, capsys):
    from flexbert.cli import main

    monkeypatch.chdir(tmp_path)  # the recipe's data_dir (runs/sample) is not here: a warning
    rc = main(["plan", str(TINY), "--gpus", "2xA100", "--json", "plan.json"])
    out = capsys.readouterr().out
    assert rc == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [p["phase"] for p in plan["phases"]] == ["flexbert-tiny", "context-extension",
                                                   "decay"]
    assert plan["mfu"] == 0.35 and plan["gpus"]["count"] == 2
    assert "MFU 0.35 (--mfu)" in out and "tiny_decay.yaml" in out and "largest microbatch" in out
    assert "warning:" in out and "data_dir: runs/sample does not exist" in out


def test_plan_reports_what_train_would_refuse(tmp_path, capsys):
    from flexbert.cli import main

    rc = main(["plan", str(TINY), "--gpus", "3xH100", "--only"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "batch.global_train_batch_size: 32 rows do not split evenly over 3 GPUs" in out


def test_training_md_figures_are_what_plan_prints_for_base(tmp_path, monkeypatch, capsys):
    """docs/training.md quotes `flexbert plan configs/base.yaml --gpus 8xH100`: every figure it
    puts in backticks there is in the command's output, so the doc cannot drift from it. The
    plan also shows the global batch and accumulation steps, and its missing-data warning for
    a 50k-vocabulary model does not suggest the 4096-token CPU sample."""
    import re

    from flexbert.cli import main

    text = (REPO / "docs" / "training.md").read_text()
    start = text.index("For `configs/base.yaml` on\n8xH100 the command prints")
    quoted = [q for q in re.findall(r"`([^`]+)`", text[start:text.index("MFU.", start)])
              if q[0].isdigit()]  # the figures; the recipe and test names are not
    assert len(quoted) >= 10, quoted
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(REPO / "configs" / "base.yaml"), "--gpus", "8xH100", "--only"]) == 0
    out = capsys.readouterr().out
    for figure in quoted:
        assert re.search(rf"(^|\s){re.escape(figure)}(\s|$)", out, re.M), (figure, out)
    assert "global batch (rows, tokens)" in out and "gradient accumulation steps" in out
    assert "data_prep mds" in out and "data_prep sample" not in out
