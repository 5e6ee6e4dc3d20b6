"""GradNorm logs the norm of the whole gradient under every data-parallel layout (4 gloo ranks:
DDP, FSDP2 over 4, and a 2 x 2 hybrid of replicas x shards), takes it once per step after
the last microbatch, before clipping, and clips with that same norm."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from flexbert.model import FlexBertForMaskedLM
from helpers import mixed_batch, tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_logged_norm_is_the_unsharded_norm_on_four_ranks(tmp_path):
    from test_fsdp import free_port

    out = tmp_path / "norms.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(["composer", "-n", "4", "--master_port", str(free_port()),
                           str(REPO / "tests" / "grad_norm_worker.py"), str(out)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    norms = json.loads(out.read_text())
    assert set(norms) == {"ddp", "fsdp2", "hybrid_2x2"}
    for layout, (logged, whole) in norms.items():
        assert logged == pytest.approx(whole, rel=1e-5), (layout, logged / whole)


def test_norm_and_clipping_follow_torch():
    """One process: the norm is torch's clip_grad_norm_ total, and clipping with it scales the
    gradients exactly as clip_grad_norm_ does."""
    from flexbert.runtime.distributed import clip_grads_, grad_norm

    torch.manual_seed(0)
    ours, theirs = FlexBertForMaskedLM(tiny_config()), FlexBertForMaskedLM(tiny_config())
    theirs.load_state_dict(ours.state_dict())
    ids, mask = mixed_batch([30, 17])
    labels = torch.where(mask.bool(), ids, -100)
    for model in (ours, theirs):
        model(ids, mask, labels=labels).loss.backward()
    norm = grad_norm(ours)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=0.01)
    torch.testing.assert_close(norm, expected)
    clip_grads_(ours, norm, 0.01)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
