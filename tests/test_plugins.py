"""Extension points: a norm and a callback from an out-of-tree package (a temporary folder on
sys.path) train tiny through train.py via `plugins:`; the same package advertised as an entry
point shows up in `flexbert components`; bad names and arguments fail at load time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexbert import cli, plugins
from flexbert.config import ConfigError
from flexbert.train.recipe.load import load_recipe
from flexbert.train.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")

PLUGIN = '''
"""An out-of-tree FlexBERT plugin: one norm, one callback."""
import json

import torch.nn as nn
from composer.core import Callback

from flexbert.registry import CALLBACKS, NORMS

BUILT = []


@NORMS.register("{norm}", "LayerNorm that counts its instances (test plugin)")
def counted_layernorm(dim, cfg):
    BUILT.append(dim)
    return nn.LayerNorm(dim, eps=cfg.eps, bias=cfg.bias)


@CALLBACKS.register("{callback}", "writes the steps it saw (test plugin)")
class StepLog(Callback):
    def __init__(self, path):
        self.path, self.steps = path, []

    def batch_end(self, state, logger):
        self.steps.append(int(state.timestamp.batch))
        with open(self.path, "w") as f:
            json.dump(self.steps, f)
'''


def write_plugin(root: Path, package: str, norm: str, callback: str) -> None:
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "parts.py").write_text(PLUGIN.format(norm=norm, callback=callback))


def test_out_of_tree_norm_and_callback_train_from_the_recipe(sample_corpus, tmp_path, monkeypatch):
    import sys

    write_plugin(tmp_path / "src", "myflex", "counted_layernorm", "step_log")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    steps = tmp_path / "steps.json"
    assert main([TINY, f"data_dir={sample_corpus}", f"save_folder={tmp_path / 'run'}",
                 "run_name=p", "max_duration=3ba", "eval_interval=1000ba",
                 "trainer.precision=fp32", "trainer.eval_subset_num_batches=1",
                 "export.hf_folder=null", "batch.warmup_start=null",
                 "batch.global_train_batch_size=8", "trainer.device_train_microbatch_size=8",
                 "plugins=[myflex.parts]", "model.norm.type=counted_layernorm",
                 f"callbacks.step_log={{path: {steps}}}", "callbacks.loss_spike={}",
                 "algorithms.ema={half_life: 2ba}"]) == 0
    assert json.loads(steps.read_text()) == [1, 2, 3]
    assert sys.modules["myflex.parts"].BUILT, "the plugin's norm was never built"


def test_entry_point_plugin_is_listed_by_components(tmp_path, monkeypatch, capsys):
    root = tmp_path / "site"
    write_plugin(root, "epflex", "ep_norm", "ep_callback")
    dist = root / "epflex-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epflex\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[flexbert.plugins]\nparts = epflex.parts\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)
    assert cli.main(["components"]) == 0
    blocks = {block.split("  (")[0]: block for block in capsys.readouterr().out.split("\n\n")}
    for family, entry in (("norm", "ep_norm"), ("callback", "ep_callback"),
                          ("optimizer", "stable_adamw"), ("scheduler", "warmup_stable_decay"),
                          ("callback", "memory_monitor"), ("callback", "loss_spike"),
                          ("algorithm", "ema")):
        assert f"\n  {entry} " in blocks[family], (family, entry)


@pytest.mark.parametrize("override, message", [
    ("callbacks.memry_monitor={}", r"callbacks.memry_monitor: unknown key; allowed keys: .*"
                                   r"registered callbacks: .*memory_monitor"),
    ("algorithms.emma={}", r"algorithms.emma: unknown algorithm 'emma'; allowed: ema"),
    ("algorithms.ema={half_lif: 2ba}", r"algorithms.ema: .*half_lif"),
    ("callbacks.loss_spike={factor: 0.5}", r"callbacks.loss_spike: needs factor > 1"),
    ("plugins=[no_such_pkg.parts]", r"plugins\[0\]: cannot import 'no_such_pkg.parts'"),
])
def test_bad_extension_fails_at_load_naming_the_key(sample_corpus, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TINY, [f"data_dir={sample_corpus}", override])


def test_components_shows_whole_first_sentences(capsys):
    """A docstring whose first sentence wraps onto a second line is listed whole (wrapped), not
    cut at the line end (`... then decay of`)."""
    from flexbert import cli

    assert cli.main(["components"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "then decay of shape `decay_shape` to `alpha_f` at max_duration." in text
    assert "over the last `t_decay` (the whole run by default)" in text
