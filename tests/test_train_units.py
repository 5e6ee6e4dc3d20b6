"""Optimizer groups, MLM metrics, metrics.jsonl and the atomic `latest` pointer, in isolation."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from flexbert.runtime.metrics_file import MetricsJSONL, read_metrics
from flexbert.runtime.perf import flops_per_token
from flexbert.train.checkpointing.saver import point_symlink
from flexbert.train.recipe.schema import OptimizerConfig
from flexbert.runtime.composer_model import MaskedAccuracy, MaskedTokenLoss
from flexbert.train.optim import OPTIMIZERS, build_optimizer, param_groups


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)


def test_no_weight_decay_on_norms_and_biases():
    m = Toy()
    decay, no_decay = param_groups(m, 0.1)
    assert {id(p) for p in decay["params"]} == {id(m.emb.weight), id(m.lin.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(m.lin.bias), id(m.norm.weight), id(m.norm.bias)}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    _, no_decay = param_groups(m, 0.1, decay_embeddings=False)
    assert id(m.emb.weight) in {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["stable_adamw", "decoupled_adamw"])
def test_weight_decay_is_decoupled_from_lr(name):
    """With zero gradients only decay acts: w *= 1 - wd * lr / peak_lr, so at the peak LR the
    shrink is wd itself (1e-2 here), not lr * wd."""
    m = torch.nn.Linear(3, 3, bias=False)
    torch.nn.init.ones_(m.weight)
    opt = build_optimizer(m, OptimizerConfig(name=name, lr=1e-3, weight_decay=1e-2))
    m.weight.grad = torch.zeros_like(m.weight)
    opt.step()
    assert m.weight.detach() == pytest.approx(torch.full((3, 3), 1 - 1e-2), abs=1e-6)


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match="optimizer.name: unknown optimizer 'sgdd'"):
        build_optimizer(Toy(), OptimizerConfig(name="sgdd"))
    assert {"stable_adamw", "decoupled_adamw"} <= set(OPTIMIZERS.names())


def test_masked_loss_is_a_per_token_mean_not_a_mean_of_batches():
    gen = torch.Generator().manual_seed(0)
    big, small = torch.randn(9, 7, generator=gen), torch.randn(1, 7, generator=gen)
    big_y, small_y = torch.randint(0, 7, (9,), generator=gen), torch.tensor([3])
    metric = MaskedTokenLoss()
    metric.update(big, big_y)      # sparse logits: one row per masked label
    metric.update(small, small_y)
    want = F.cross_entropy(torch.cat([big, small]), torch.cat([big_y, small_y]))
    batch_mean = (F.cross_entropy(big, big_y) + F.cross_entropy(small, small_y)) / 2
    assert metric.compute() == pytest.approx(want.item(), rel=1e-6)
    assert abs(metric.compute() - batch_mean) > 1e-3


def test_metrics_accept_dense_logits_with_ignored_labels():
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 4] = logits[1, 2, 0] = 10.0
    labels = torch.full((2, 3), -100)
    labels[0, 1], labels[1, 2], labels[1, 0] = 4, 1, 2
    acc = MaskedAccuracy()
    acc.update(logits, labels)
    assert acc.compute() == pytest.approx(1 / 3)


def test_metrics_jsonl_writes_one_row_per_step(tmp_path):
    path = tmp_path / "m" / "metrics.jsonl"
    dest = MetricsJSONL(str(path))
    for step in (1, 2):
        state = SimpleNamespace(timestamp=SimpleNamespace(batch=step, token=100 * step))
        dest.log_metrics({"loss/train/total": torch.tensor(3.0 / step), "time/batch": step})
        dest.log_metrics({"lr-StableAdamW/group0": 1e-3 * step, "throughput/tokens_per_sec": 5.0})
        dest.batch_checkpoint(state, None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["loss"], r["lr"]) for r in rows] == [
        (1, 100, 3.0, 1e-3), (2, 200, 1.5, 2e-3)]
    assert "time/batch" not in rows[0] and rows[0]["throughput/tokens_per_sec"] == 5.0
    path.open("a").write(json.dumps({"step": 2, "tokens": 200, "loss": 9.0, "lr": 0}) + "\n")
    assert read_metrics(str(path))[-1]["loss"] == 9.0  # a redone step: the last line wins


def test_point_symlink_replaces_atomically(tmp_path):
    for name in ("a.pt", "b.pt"):
        (tmp_path / name).write_text(name)
    link = str(tmp_path / "latest-rank0.pt")
    point_symlink(link, str(tmp_path / "a.pt"))
    point_symlink(link, str(tmp_path / "b.pt"))
    assert os.readlink(link) == "b.pt" and open(link).read() == "b.pt"
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt", "latest-rank0.pt"]


def test_flops_per_token_grows_with_width():
    from pathlib import Path

    from flexbert.train.recipe.load import load_recipe

    base = load_recipe(Path(__file__).resolve().parents[1] / "configs" / "base.yaml").model
    fpt = flops_per_token(base, 1024, 0.3)
    # ~6 x 110M non-embedding-ish params; bounded loosely so a unit slip (x1000) fails.
    assert 4e8 < fpt < 2e9


def test_not_in_state_dict_warning_is_silenced_only_for_stateless_callbacks():
    """Phase 2 loads phase 1's checkpoint, which has no Publish callback: Composer warns
    "Publish is not in the state_dict" (its wording, composer/core/state.py). A callback with
    no state has nothing to restore; one with state keeps the warning."""
    import warnings

    from composer.core import Callback

    from flexbert.train.builder import quiet_stateless_callbacks

    class Publish(Callback):
        pass

    class Counter(Callback):
        def state_dict(self) -> dict:
            return {"count": 3}

    callbacks = [Publish(), Counter()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_stateless_callbacks(callbacks)
        for callback in callbacks:  # as Composer words it
            warnings.warn(f"{type(callback).__qualname__} is not in the state_dict. Its state "
                          "will not be restored.", UserWarning)
    assert [str(w.message).split()[0].split(".")[-1] for w in caught] == ["Counter"]
