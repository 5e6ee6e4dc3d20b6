"""Launched by tests/test_grad_norm.py as `composer -n 4 tests/grad_norm_worker.py OUT`: the
gradient norm GradNorm logs, under each data-parallel layout on 4 gloo ranks, against the norm of
the same gradients in one process. Rank 0 writes {layout: [logged, unsharded]} as JSON to OUT.

Every rank computes the reference gradients of one tiny model on one fixed batch (identical
everywhere), then hands them to each layout as that layout holds them: DDP whole, FSDP2 over a
1-D mesh of 4 and over a 2 x 2 (replicate, shard) mesh as Composer builds it from
FSDP2Config(device_mesh=...) (HSDP), each rank its DTensor shard. FSDP2's HSDP cannot *train* on
gloo (its replica all-reduce asks for ReduceOp.AVG, which gloo lacks), so the gradients are
placed, not backpropagated; the reduction under test is the same."""

from __future__ import annotations

import copy
import json
import sys

import torch
from composer.core import Precision
from composer.distributed.fsdp2 import prepare_fully_shard
from composer.distributed.fsdp2_utils import generate_composer_model_policy
from composer.utils import dist
from composer.utils.parallelism import FSDP2Config
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor

from flexbert.model import FlexBertForMaskedLM
from flexbert.runtime.composer_model import ComposerFlexBertMLM
from helpers import mixed_batch, tiny_config


def logged_norm(model) -> float:
    """What GradNorm logs for this model's gradients."""
    from flexbert.runtime.distributed import grad_norm

    return float(grad_norm(model))


def reference() -> tuple[ComposerFlexBertMLM, dict, float]:
    torch.manual_seed(0)
    model = ComposerFlexBertMLM(FlexBertForMaskedLM(tiny_config()))
    ids, mask = mixed_batch([30, 17, 25])
    labels = torch.where(mask.bool(), ids, -100)
    model.model(ids, mask, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    full = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())))
    return model, grads, full


def sharded(model, grads: dict, mesh) -> float:
    model = copy.deepcopy(model)
    # as the Trainer does for a ComposerModel (composer/distributed/prepare_distributed.py)
    prepare_fully_shard(model, FSDP2Config(device_mesh=mesh), Precision.FP32,
                        generate_composer_model_policy(model))
    for name, p in model.named_parameters():
        p.grad = distribute_tensor(grads[name], p.device_mesh, p.placements)
    return logged_norm(model)


def main(out: str) -> None:
    dist.initialize_dist("cpu")
    model, grads, full = reference()
    results = {"ddp": [logged_norm(model), full]}
    results["fsdp2"] = [sharded(model, grads, init_device_mesh("cpu", (4,))), full]
    hybrid = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    results["hybrid_2x2"] = [sharded(model, grads, hybrid), full]
    if dist.get_global_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
