"""Recipe loading: every shipped recipe validates, encodes RECIPE.md, and bad keys fail early."""

from pathlib import Path

import pytest

from flexbert.config import ConfigError
from flexbert.train.recipe.load import load_recipe
from flexbert.train.main import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))  # every recipe; presets live in model/
INTERFACE = ["data_dir", "run_name", "seed", "max_duration", "eval_interval", "save_folder",
             "save_interval", "autoresume", "load_path"]


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load(name):
    recipe = load_recipe(CONFIGS / name)
    for key in INTERFACE:
        assert hasattr(recipe.cfg, key), key
    assert recipe.model.vocab_size % 64 == 0
    assert recipe.data.mlm_probability == 0.3 and recipe.data.eval_mlm_probability == 0.15


@pytest.mark.parametrize("name,lr,warmup,batch,start,ramp,layers", [
    ("base.yaml", 8e-4, "3000000000tok", 4608, 768, 50_000_000_000, 22),
    ("large.yaml", 5e-4, "2000000000tok", 4928, 448, 10_000_000_000, 28),
])
def test_phase1_recipes_match_recipe_md(name, lr, warmup, batch, start, ramp, layers):
    recipe = load_recipe(CONFIGS / name)
    cfg = recipe.cfg
    assert recipe.data.max_seq_len == 1024 and recipe.model.num_layers == layers
    assert cfg.optimizer.name == "stable_adamw" and cfg.optimizer.lr == lr
    assert cfg.optimizer.betas == [0.9, 0.98] and cfg.optimizer.eps == 1e-6
    assert cfg.optimizer.weight_decay == 1e-5 and not cfg.optimizer.decay_norms_and_biases
    assert cfg.scheduler == {"name": "warmup_stable_decay", "t_warmup": warmup, "t_decay": "0tok",
                             "alpha_f": 0.0}
    assert (cfg.batch.global_train_batch_size, cfg.batch.warmup_start) == (batch, start)
    assert cfg.batch.warmup_tokens == ramp
    assert cfg.max_duration == "1719000000000tok" and cfg.trainer.precision == "amp_bf16"


def test_every_interface_key_overrides():
    values = ["data_dir=/d", "run_name=r", "seed=3", "max_duration=7ba", "eval_interval=5ba",
              "save_folder=/s", "save_interval=1000000tok", "autoresume=true", "load_path=/c.pt"]
    cfg = load_recipe(CONFIGS / "tiny.yaml", values).cfg
    got = [cfg.data_dir, cfg.run_name, cfg.seed, cfg.max_duration, cfg.eval_interval,
           cfg.save_folder, cfg.save_interval, cfg.autoresume, cfg.load_path]
    assert got == ["/d", "r", 3, "7ba", "5ba", "/s", "1000000tok", True, "/c.pt"]


def test_model_preset_is_overridden_by_recipe_keys():
    recipe = load_recipe(CONFIGS / "tiny.yaml", ["model.num_layers=2", "model.attention.num_heads=2"])
    assert recipe.model.num_layers == 2 and recipe.model.attention.num_heads == 2
    assert recipe.model.hidden_size == 64  # from configs/model/tiny.yaml


def test_data_dir_becomes_the_stream():
    recipe = load_recipe(CONFIGS / "tiny.yaml", ["data_dir=/corpus", "batch.warmup_start=8",
                                                  "batch.warmup_tokens=200000"])
    assert [s.local for s in recipe.data.streams.values()] == ["/corpus"]
    assert recipe.data.batch_warmup_min_rows == 8 and recipe.data.batch_warmup_tokens == 200000


@pytest.mark.parametrize("override,match", [
    ("bogus_key=1", "bogus_key"),
    ("optimizer.momentum=0.9", "optimizer.momentum"),
    ("model.hidden_sise=32", "model.hidden_sise"),
    ("data.mask_prob=0.2", "data.mask_prob"),
    ("trainer.precison=fp32", "trainer.precison"),
    ("optimizer.name=lamb", "unknown optimizer 'lamb'"),
    ("scheduler.name=cosine_forever", "unknown scheduler 'cosine_forever'"),
    ("scheduler.t_warmup=3B", "t_warmup"),
    ("max_duration=10steps", "max_duration"),
    ("model.attention.num_heads=5", "model.attention.num_heads"),
    ("batch.global_train_batch_size=4 batch.warmup_start=8", "batch.warmup_start"),
])
def test_bad_config_fails_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(CONFIGS / "tiny.yaml", override.split())


def test_cli_reports_bad_key_before_building(capsys):
    assert main([str(CONFIGS / "tiny.yaml"), "optimizer.name=lamb", "data_dir=/nonexistent"]) == 2
    assert "unknown optimizer 'lamb'" in capsys.readouterr().err


def test_help_lists_scheduler_keys_and_one_set_of_batch_warmup_keys():
    from flexbert.train.recipe.help import keys_help

    text = keys_help()
    for key in ("scheduler.name", "scheduler.t_warmup", "scheduler.t_decay", "scheduler.alpha_f",
                "scheduler.decay_shape", "batch.warmup_start", "batch.warmup_tokens"):
        assert f"  {key} " in text, key
    assert "data.batch_warmup" not in text  # the loader's internal per-device copy
    assert "scheduler.t_decay" in text and "'0tok'  # for warmup_stable_decay" in text
