"""Phase-2/3 recipes encode shared/RECIPE.md (tests/test_train_config.py already loads every
configs/*.yaml; this checks the values)."""

from pathlib import Path

import pytest

from flexbert.train.recipe.load import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,prev,batch,lr,wd,sched,duration", [
    ("context_extension.yaml", "modernbert-base-phase1", 576, 3e-4, 1e-5,
     {"name": "constant_with_warmup", "t_warmup": "0tok"}, "250000000000tok"),
    ("decay.yaml", "modernbert-base-context-extension", 576, 3e-4, 1e-5,
     {"name": "one_minus_sqrt", "t_decay": "1dur", "alpha_f": 0.001, "t_warmup": "0tok"},
     "50000000000tok"),
    ("large_context_extension.yaml", "modernbert-large-phase1", 616, 5e-5, 1e-6,
     {"name": "constant_with_warmup", "t_warmup": "0tok"}, "250000000000tok"),
    ("large_decay.yaml", "modernbert-large-context-extension", 624, 5e-5, 1e-6,
     {"name": "one_minus_sqrt", "t_decay": "1dur", "alpha_f": 0.001, "t_warmup": "0tok"},
     "50000000000tok"),
])
def test_later_phases_match_recipe_md(name, prev, batch, lr, wd, sched, duration):
    recipe = load_recipe(CONFIGS / name)
    cfg, model = recipe.cfg, recipe.model
    assert recipe.data.max_seq_len == 8192 and model.max_position_embeddings >= 8192
    assert (model.position.global_theta, model.position.local_theta) == (160000.0, 10000.0)
    assert model.attention.local_window == 128
    assert cfg.load_path == f"checkpoints/{prev}/latest-rank0.pt"
    assert cfg.reset_time and not cfg.load_weights_only and cfg.autoresume
    assert cfg.batch.global_train_batch_size == batch and cfg.batch.warmup_start is None
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (
        "stable_adamw", lr, wd)
    assert cfg.optimizer.betas == [0.9, 0.98] and cfg.optimizer.eps == 1e-6
    assert cfg.scheduler == sched and cfg.max_duration == duration
    assert cfg.callbacks.publish.enabled and cfg.callbacks.publish.at_end
    # Same tokens per step as phase 1 within 10 % (base 4608 x 1024, large 4928 x 1024).
    phase1 = load_recipe(CONFIGS / ("large.yaml" if "large" in name else "base.yaml"))
    ratio = batch * 8192 / (phase1.cfg.batch.global_train_batch_size * 1024)
    assert 0.9 < ratio < 1.1


@pytest.mark.parametrize("name,seq,theta", [("tiny.yaml", 128, 10000.0),
                                            ("tiny_context_extension.yaml", 512, 160000.0),
                                            ("tiny_decay.yaml", 512, 160000.0)])
def test_tiny_phases(name, seq, theta):
    recipe = load_recipe(CONFIGS / name)
    assert recipe.data.max_seq_len == seq and recipe.model.position.global_theta == theta
    assert recipe.model.position.local_theta == 10000.0
    if name != "tiny.yaml":
        assert recipe.cfg.reset_time and recipe.cfg.load_path.endswith("latest-rank0.pt")


def test_publish_every_must_be_a_time_string():
    from flexbert.config import ConfigError

    with pytest.raises(ConfigError, match="callbacks.publish.every"):
        load_recipe(CONFIGS / "tiny_decay.yaml", ["callbacks.publish.every=often"])


def test_tiny_learns_per_token_and_base_large_keep_the_recipe():
    """bench/quality.py: at the tiny scale StableAdamW's update clipping and longest-first packing
    from a 2-batch buffer cost loss per token, so tiny has neither (optimi AdamW: the same
    optimizer without the update clipping; pieces in random order from a 128-batch buffer, in
    every tiny phase), and keeps the recipe's batch-size warmup, scaled; base and large keep the
    recipe's StableAdamW, batch-size warmup and packing; no phase-1 recipe clips gradients."""
    for name in ("tiny.yaml", "tiny_context_extension.yaml", "tiny_decay.yaml"):
        tiny = load_recipe(CONFIGS / name)
        assert tiny.cfg.optimizer.name == "optimi_adamw"
        assert (tiny.cfg.optimizer.betas, tiny.cfg.optimizer.eps) == ([0.9, 0.98], 1e-6)
        assert (tiny.data.pack_order, tiny.data.pack_buffer_factor) == ("random", 128.0)
    tiny = load_recipe(CONFIGS / "tiny.yaml")
    assert (tiny.cfg.batch.warmup_start, tiny.cfg.batch.warmup_tokens) == (8, 200_000)
    assert tiny.cfg.trainer.grad_clip_norm == 0.0
    assert tiny.cfg.optimizer.weight_decay == 1e-5
    for name, start in (("base.yaml", 768), ("large.yaml", 448)):
        recipe = load_recipe(CONFIGS / name)
        cfg = recipe.cfg
        assert cfg.batch.warmup_start == start and cfg.trainer.grad_clip_norm == 0.0
        assert cfg.optimizer.name == "stable_adamw"
        assert (recipe.data.pack_order, recipe.data.pack_buffer_factor) == ("longest", 2.0)
