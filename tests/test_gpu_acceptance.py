"""bench/gpu_acceptance.py is one command for the day a GPU is lent; without CUDA it says so in
one line and exits 0 (its checks themselves need a GPU and are not run here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the script would run")
def test_acceptance_script_skips_on_cpu_with_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [
        "gpu_acceptance: SKIPPED: no CUDA device here; run it on a machine with one GPU"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_acceptance_script_imports_what_it_calls():
    """The GPU-only functions exist where the script imports them (a rename would only show
    on the GPU day otherwise)."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_acceptance  # noqa: F401
    from gpu_throughput import packed_batches, run_case  # noqa: F401

    from composer.distributed.mosaic_parallelism import get_mixed_precision
    from flexbert.model.compile import compile_options, without_duck_shapes
    from flexbert.runtime.perf import device_peak_flops, flops_per_token

    _, _, _, buffer_dtype = get_mixed_precision("amp_bf16", "DEFAULT")
    assert buffer_dtype == torch.bfloat16  # the cast the RoPE check is about


def test_kernel_check_runs_on_cpu_kernels():
    """The kernel comparison itself, small, with the kernels CPU has (sdpa against itself, and
    flex where this torch can backpropagate through it on CPU)."""
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_acceptance import check_kernels

    from flexbert.model.attention.kernels import flex_cpu_backward

    rows = check_kernels(torch.device("cpu"), lengths=(40, 7, 90), heads=2, head_dim=16)
    kernels = {r["kernel"] for r in rows}
    assert {"sdpa", "flex"} <= kernels
    assert {r["window"] for r in rows} == {None, 64}
    for row in rows:
        if row["kernel"] == "flex" and not flex_cpu_backward():
            assert row.get("skipped") or row["ok"] is not False, row  # refused to train, or ran
            continue
        assert row["ok"], row
