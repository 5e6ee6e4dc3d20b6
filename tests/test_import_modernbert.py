"""`flexbert import-modernbert`: a checkpoint and a YAML in the ModernBERT research repository's
layout -> a FlexBERT checkpoint and recipe that resume training.

Their layout is written here from THEIR public names (src/bert_layers: FlexBertForMaskedLM with
`bert`, `head`, `decoder`; encoder `layers`; layer 0 has no attn_norm with skip_first_prenorm;
Composer's HuggingFaceModel adds `model.`) and their convert_to_hf.py is the oracle for which
transformers name each one is, never from the importer's own mapping.
"""

from __future__ import annotations

import datetime
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from flexbert.cli import main as cli
from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main as train

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
LAYERS = 4  # configs/model/tiny.yaml

# Their FlexBertConfig for configs/model/tiny.yaml's shape, in their keys (as a pretrain YAML
# writes them), plus BertConfig keys their checkpoint metadata carries and FlexBERT ignores.
THEIR_MODEL = dict(
    vocab_size=4096, init_method="full_megatron", num_hidden_layers=LAYERS, hidden_size=64,
    intermediate_size=96, num_attention_heads=4, attention_layer="rope",
    attention_probs_dropout_prob=0.0, attn_out_bias=False, attn_out_dropout_prob=0.0,
    attn_qkv_bias=False, bert_layer="prenorm", embed_dropout_prob=0.0, embed_norm=True,
    final_norm=True, skip_first_prenorm=True, embedding_layer="sans_pos",
    loss_function="fa_cross_entropy", loss_kwargs={"reduction": "mean"}, mlp_dropout_prob=0.0,
    mlp_in_bias=False, mlp_layer="glu", mlp_out_bias=False, normalization="layernorm",
    norm_kwargs={"eps": 1e-5, "bias": False}, hidden_act="gelu", head_pred_act="gelu",
    activation_function="gelu", padding="unpadded", rotary_emb_dim=None, rotary_emb_base=10000.0,
    rotary_emb_scale_base=None, rotary_emb_interleaved=False, allow_embedding_resizing=True,
    sliding_window=16, global_attn_every_n_layers=3, unpad_embeddings=True, compile_model=False,
    masked_prediction=True,
)
BERT_KEYS = dict(pad_token_id=0, max_position_embeddings=512, layer_norm_eps=1e-12,
                 type_vocab_size=2, model_type="flex_bert", architectures=["FlexBertForMaskedLM"])


def their_names(layers: int = LAYERS) -> list[str]:
    """Their Composer state keys, in their module registration order."""
    names = ["model.bert.embeddings.tok_embeddings.weight", "model.bert.embeddings.norm.weight"]
    for i in range(layers):
        leaves = ["attn_norm.weight"] if i > 0 else []  # skip_first_prenorm: Identity in layer 0
        leaves += ["attn.Wqkv.weight", "attn.Wo.weight", "mlp_norm.weight", "mlp.Wi.weight",
                   "mlp.Wo.weight"]
        names += [f"model.bert.encoder.layers.{i}.{leaf}" for leaf in leaves]
    return names + ["model.bert.final_norm.weight", "model.head.dense.weight",
                    "model.head.norm.weight", "model.decoder.weight", "model.decoder.bias"]


def hf_name(their: str) -> str:
    """convert_to_hf.py: Composer's `model.` prefix is consumed, then its two regex rules."""
    name = their.removeprefix("model.")
    name = re.sub(r"encoder\.layers\.(.*)", r"layers.\1", name)
    return re.sub(r"^bert\.(.*)", r"model.\1", name)


def their_param_groups(weights: dict) -> list[list[str]]:
    """Their main.py groups: [no decay (ndim <= 1 or .bias), decay], named_parameters order
    (the tied decoder weight is the embedding's, listed once)."""
    params = [n for n in weights if n != "model.decoder.weight"]
    no_decay = [n for n in params if weights[n].ndim <= 1 or n.endswith(".bias")]
    return [no_decay, [n for n in params if n not in no_decay]]


def their_checkpoint(native: dict, keyed_by_position: bool = False) -> dict:
    """Their Composer checkpoint holding a FlexBERT checkpoint's weights and optimizer state.
    FlexBERT's names are transformers' (flexbert/io/hf.py) under Composer's `model.` prefix."""
    state = native["state"]
    flex = {name: f"model.{hf_name(name)}" for name in their_names()}
    assert sorted(flex.values()) == sorted(state["model"])  # every weight, once
    weights = {name: state["model"][flex[name]].clone() for name in their_names()}
    (ours,) = state["optimizers"].values()
    groups = their_param_groups(weights)
    decay = {0: 0.0, 1: ours["param_groups"][0]["weight_decay"]}
    template = ours["param_groups"][0]
    param_groups = [{"lr": template["lr"], "beta1": 0.9, "beta2": 0.98, "eps": 1e-6,
                     "weight_decay": decay[i], "decouple_lr": True, "max_lr": template["max_lr"],
                     "kahan_sum": None, "foreach": True, "gradient_release": False, "setup": True,
                     "step": template["step"].clone(), "initial_lr": template["initial_lr"],
                     "params": names} for i, names in enumerate(groups)]
    opt_state = {name: {k: (v.clone() if torch.is_tensor(v) else v)
                        for k, v in ours["state"][flex[name]].items()}
                 for group in groups for name in group}
    if keyed_by_position:  # older Composer: optimizer.state_dict()'s integer ids
        index = {name: i for i, name in enumerate(n for g in groups for n in g)}
        opt_state = {index[n]: v for n, v in opt_state.items()}
        for group in param_groups:
            group["params"] = [index[n] for n in group["params"]]
    ts = dict(state["timestamp"]["Timestamp"], total_wct=datetime.timedelta(seconds=7))
    return {"state": {
        "model": weights,
        "optimizers": {"StableAdamW": {"state": opt_state, "param_groups": param_groups}},
        "timestamp": {"Timestamp": ts},
        "schedulers": {"LambdaLR": {"base_lrs": [2e-3, 2e-3], "last_epoch": 2}},
        "dataset_state": {"train": {"epoch": 0, "sample_in_epoch": 16, "num_canonical_nodes": 1}},
        "callbacks": {"SpeedMonitor": {"total_eval_wct": 0.0}}, "algorithms": [],
        "rank_zero_seed": 17, "run_name": "their-run",
        "integrations": {"huggingface": {"model": {"config": {
            "file_extension": ".json", "content": {**BERT_KEYS, **THEIR_MODEL},
            "class": "src.bert_layers.model.FlexBertForMaskedLM"}}, "tokenizer": {}}},
    }, "rng": native["rng"]}


def their_yaml(corpus: Path) -> str:
    """Their pretrain YAML's layout, with configs/tiny.yaml's run settings."""
    model = textwrap.indent(yaml.safe_dump(THEIR_MODEL, sort_keys=False), "    ")
    return f"""\
data_local: {corpus}
data_remote:
max_seq_len: 128
tokenizer_name: {corpus / 'tokenizer'}
mlm_probability: 0.3
count_padding_tokens: false
run_name: their-run
model:
  name: flex_bert
  pretrained_model_name: bert-base-uncased
  tokenizer_name: ${{tokenizer_name}}
  disable_train_metrics: false
  model_config:
{model}
train_loader:
  name: text
  dataset:
    local: ${{data_local}}
    remote: ${{data_remote}}
    split: train
    tokenizer_name: ${{tokenizer_name}}
    max_seq_len: ${{max_seq_len}}
    shuffle: true
    mlm_probability: ${{mlm_probability}}
    streaming: false
  drop_last: true
  num_workers: 0
  sequence_packing: true
  batch_size_warmup_min_size: 8
  batch_size_warmup_tokens: 200_000tok
eval_loader:
  name: text
  dataset:
    local: ${{data_local}}
    split: validation
    mlm_probability: 0.15
    streaming: false
  num_workers: 0
scheduler:
  name: warmup_stable_decay
  t_warmup: 100_000tok
  alpha_f: 0.00
  t_decay: 0tok
optimizer:
  name: decoupled_stableadamw
  lr: 2e-3
  betas: [0.9, 0.98]
  eps: 1.0e-06
  weight_decay: 1.0e-5
  filter_bias_norm_wd: true
  log_grad_norm: true
algorithms:
  gradient_clipping:
    clipping_type: norm
    clipping_threshold: 1.0
max_duration: 4ba
eval_interval: 1000ba
global_train_batch_size: 32
seed: 17
device_eval_batch_size: 32
device_train_microbatch_size: 32
precision: fp32
callbacks:
  speed_monitor:
    window_size: 20
  lr_monitor: {{}}
  scheduled_gc: {{}}
"""


# What their YAML's run does where configs/tiny.yaml differs: StableAdamW and longest-first packing
# from a 2-batch buffer (tiny uses optimi AdamW and random order from 128 batches).
THEIR_RUN = ["optimizer.name=stable_adamw", "data.pack_order=longest", "data.pack_buffer_factor=2"]
THEIR_BATCH = ["batch.warmup_start=8", "batch.warmup_tokens=200000", "trainer.grad_clip_norm=1.0",
               *THEIR_RUN]
RUN = ["trainer.eval_subset_num_batches=1", "export.hf_folder=null", "max_duration=4ba",
       "trainer.console_log_interval=1000ba", "trainer.progress_bar=false"]


def losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(str(folder / "metrics.jsonl"))}


def plain_load(path: Path) -> dict:
    """CONTRACTS point 2: weights_only plus numpy's array reconstruction."""
    from flexbert.io.trust import _numpy_globals

    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def native(sample_corpus, tmp_path_factory) -> Path:
    """Two native FlexBERT steps: the weights and optimizer state both sides continue from."""
    folder = tmp_path_factory.mktemp("native")
    assert train([TINY, f"data_dir={sample_corpus}", f"save_folder={folder}", "run_name=t",
                  "max_duration=2ba", "save_interval=2ba", "trainer.precision=fp32",
                  *THEIR_RUN, *RUN[:2], *RUN[3:]]) == 0
    return folder / "ep0-ba2-rank0.pt"


@pytest.fixture(scope="module")
def converted(native, sample_corpus, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Their checkpoint and YAML, and what `flexbert import-modernbert` makes of them."""
    folder = tmp_path_factory.mktemp("theirs")
    ckpt = torch.load(native, map_location="cpu", weights_only=False)
    torch.save(their_checkpoint(ckpt), folder / "latest-rank0.pt")
    (folder / "modernbert-tiny-pretrain.yaml").write_text(their_yaml(sample_corpus))
    out, recipe = folder / "flexbert.pt", folder / "recipe.yaml"
    assert cli(["import-modernbert", "--checkpoint", str(folder / "latest-rank0.pt"),
                "--out", str(out), "--yaml", str(folder / "modernbert-tiny-pretrain.yaml"),
                "--recipe", str(recipe), "--tokenizer", str(sample_corpus / "tokenizer")]) == 0
    return folder, out, recipe


def reference_checkpoint(native: Path, folder: Path) -> Path:
    """The native checkpoint with the weights taken through transformers (their convert_to_hf
    names -> ModernBertForMaskedLM -> flexbert.io.hf), and the data position the import cannot
    carry dropped the same way (the loader starts its data over; step counters carry on)."""
    from flexbert.model import model_config
    from flexbert.io.hf import from_transformers, to_transformers
    from flexbert.model import FlexBertForMaskedLM
    from omegaconf import OmegaConf

    ckpt = torch.load(native, map_location="cpu", weights_only=False)
    state = ckpt["state"]
    cfg = model_config(OmegaConf.create(state["callbacks"]["PhaseInfo"]["model_config"]))
    hf = to_transformers(FlexBertForMaskedLM(cfg))
    theirs = their_checkpoint(ckpt)["state"]["model"]
    hf.load_state_dict({hf_name(k): v for k, v in theirs.items()})
    state["model"] = {f"model.{k}": v for k, v in from_transformers(hf).state_dict().items()
                      if "inv_freq" not in k}
    del state["dataset_state"]
    ts = state["timestamp"]["Timestamp"]
    ts.update(epoch=0, batch_in_epoch=0, sample_in_epoch=0, token_in_epoch=0,
              epoch_in_iteration=0)
    path = folder / "reference.pt"
    torch.save(ckpt, path)
    return path


def test_converted_checkpoint_resumes_like_the_native_run(native, converted, sample_corpus,
                                                          tmp_path):
    folder, out, recipe = converted
    mine = tmp_path / "converted"
    assert train([str(recipe), f"save_folder={mine}", *RUN]) == 0
    ref = tmp_path / "reference"
    # the reference runs the tiny recipe with the settings their YAML carries (batch-size warmup
    # 8 rows over 200k tokens, clipping at 1.0, StableAdamW, longest-first packing)
    assert train([TINY, f"data_dir={sample_corpus}", f"save_folder={ref}", "run_name=t",
                  "trainer.precision=fp32", f"load_path={reference_checkpoint(native, tmp_path)}",
                  *THEIR_BATCH, *RUN]) == 0
    got, want = losses(mine), losses(ref)
    assert sorted(got) == sorted(want) == [3, 4]
    # step 3: the same weights as through transformers; step 4: the optimizer state carried
    assert got[3] == pytest.approx(want[3], rel=1e-6, abs=0)
    assert got[4] == pytest.approx(want[4], rel=1e-6, abs=0)
    print(f"losses converted {got} reference {want}")


def test_written_checkpoint_is_plain_and_carries_clock_optimizer_and_config(native, converted):
    _, out, _ = converted
    ckpt = plain_load(out)  # no pickled objects of anyone's classes
    state, ref = ckpt["state"], torch.load(native, map_location="cpu", weights_only=False)["state"]
    ts = state["timestamp"]["Timestamp"]
    tokens = ref["timestamp"]["Timestamp"]["token"]
    assert (ts["batch"], ts["token"], ts["batch_in_epoch"]) == (2, tokens, 0)
    (opt,) = state["optimizers"].values()
    (native_opt,) = ref["optimizers"].values()
    assert ([g["params"] for g in opt["param_groups"]]
            == [g["params"] for g in native_opt["param_groups"]])
    assert [int(g["step"]) for g in opt["param_groups"]] == [2, 2]
    for name, tensors in native_opt["state"].items():
        assert torch.equal(opt["state"][name]["exp_avg_sq"], tensors["exp_avg_sq"]), name
    info = state["callbacks"]["PhaseInfo"]
    assert "out_dropout: 0.0" in info["model_config"] and info["run_name"] == "their-run"
    assert info["max_seq_len"] == 128


def test_position_keyed_optimizer_state_converts_the_same(native, sample_corpus, tmp_path):
    from flexbert.interop.modernbert import import_checkpoint
    from flexbert.interop.modernbert_config import tokenizer_ids

    ids = tokenizer_ids(str(sample_corpus / "tokenizer"))
    ckpt = torch.load(native, map_location="cpu", weights_only=False)
    outs = []
    for by_position in (False, True):
        src = tmp_path / f"theirs-{by_position}.pt"
        torch.save(their_checkpoint(ckpt, keyed_by_position=by_position), src)
        import_checkpoint(str(src), str(tmp_path / f"out-{by_position}.pt"), token_ids=ids)
        outs.append(plain_load(tmp_path / f"out-{by_position}.pt")["state"]["optimizers"])
    (a,), (b,) = (o.values() for o in outs)
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    for name in a["state"]:
        assert torch.equal(a["state"][name]["exp_avg"], b["state"][name]["exp_avg"]), name


def test_recipe_lists_what_did_not_map(converted, capsys):
    _, _, recipe = converted
    text = recipe.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    for key in ("eval_loader.dataset.split", "callbacks.scheduled_gc", "device_eval_batch_size"):
        assert any(line.startswith(f"#   {key}: ") for line in header), key
    body = yaml.safe_load(text)
    assert body["optimizer"]["name"] == "stable_adamw" and body["trainer"]["grad_clip_norm"] == 1.0
    assert body["batch"] == {"warmup_start": 8, "warmup_tokens": 200000,
                             "global_train_batch_size": 32}
    assert body["load_path"].endswith("flexbert.pt")
    assert body["model"]["first_layer_attn_norm"] is False


def _evil_module(tmp_path: Path, marker: Path):
    """A class of 'theirs' whose unpickling would write `marker`."""
    pkg = tmp_path / "their_src"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "callbacks.py").write_text(textwrap.dedent(f"""
        class Runtime:
            def __setstate__(self, state):
                open({str(marker)!r}, "w").write("ran")
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        from their_src.callbacks import Runtime

        return Runtime()
    finally:
        sys.path.remove(str(tmp_path))


def test_checkpoint_with_their_classes_is_refused_unless_trusted(native, sample_corpus, tmp_path,
                                                                 capsys):
    marker = tmp_path / "executed"
    ckpt = their_checkpoint(torch.load(native, map_location="cpu", weights_only=False))
    ckpt["state"]["callbacks"]["RuntimeEstimator"] = _evil_module(tmp_path, marker)
    src = tmp_path / "theirs.pt"
    torch.save(ckpt, src)
    for name in [n for n in sys.modules if n.startswith("their_src")]:
        del sys.modules[name]  # as on a machine without their code
    out = tmp_path / "out.pt"
    tok = ["--tokenizer", str(sample_corpus / "tokenizer")]
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(out), *tok]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "their_src.callbacks.Runtime" in err[0]
    assert "--trust-checkpoint" in err[0] and not out.exists()
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(out), *tok,
                "--trust-checkpoint"]) == 0
    assert not marker.exists() and "their_src" not in sys.modules
    assert "RuntimeEstimator" not in plain_load(out)["state"]["callbacks"]


def test_bad_inputs_fail_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert cli(["import-modernbert", "--checkpoint", str(missing), "--out",
                str(tmp_path / "o.pt")]) == 2
    assert f"{missing}: no such checkpoint file" in capsys.readouterr().err
    truncated = tmp_path / "truncated.pt"
    torch.save({"state": {"model": {"w": torch.zeros(1000)}}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    assert cli(["import-modernbert", "--checkpoint", str(truncated), "--out",
                str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{truncated}: not a readable torch checkpoint" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: flex_bert\n  model_config:\n    embedding_layer: sans_pos\n"
                   "    attention_layer: alibi\n    vocab_size: 50368\n")
    assert cli(["import-modernbert", "--yaml", str(bad), "--recipe", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_config.attention_layer='alibi'" in err[0]
    bad.write_text("seed: seventeen\n")
    assert cli(["import-modernbert", "--yaml", str(bad), "--recipe", str(tmp_path / "r.yaml")]) == 2
    assert f"{bad}: seed: 'seventeen' is not a valid value" in capsys.readouterr().err
    assert not (tmp_path / "r.yaml").exists()


def test_converted_weights_give_the_logits_their_weights_give_through_transformers(converted):
    """transformers' ModernBERT loaded by their convert_to_hf names is the oracle."""
    from omegaconf import OmegaConf

    from flexbert.model import model_config
    from flexbert.io.hf import to_transformers
    from flexbert.model import FlexBertForMaskedLM
    from tests.helpers import mixed_batch

    folder, out, _ = converted
    state = plain_load(out)["state"]
    tree = OmegaConf.create(state["callbacks"]["PhaseInfo"]["model_config"])
    cfg = model_config(OmegaConf.merge(tree, {"sparse_prediction": False}))  # logits for all
    flex = FlexBertForMaskedLM(cfg).eval()
    flex.load_state_dict({k.removeprefix("model."): v for k, v in state["model"].items()})
    hf = to_transformers(FlexBertForMaskedLM(cfg)).eval()
    theirs = torch.load(folder / "latest-rank0.pt", map_location="cpu", weights_only=False)
    hf.load_state_dict({hf_name(k): v for k, v in theirs["state"]["model"].items()})
    ids, mask = mixed_batch([40, 17, 33], vocab=4096)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = flex(ids, mask).logits[mask.bool()]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_wrong_shaped_optimizer_state_and_unsafe_outputs_are_refused(native, sample_corpus,
                                                                    tmp_path, capsys):
    """Issue 22, point 7: an `exp_avg` of the wrong shape is named (not imported to crash at the
    first step); --out equal to --checkpoint or naming a directory is refused, nothing left."""
    ckpt = their_checkpoint(torch.load(native, map_location="cpu", weights_only=False))
    (state,) = ckpt["state"]["optimizers"].values()
    name = next(iter(state["state"]))
    state["state"][name]["exp_avg"] = torch.zeros(3)
    src = tmp_path / "theirs.pt"
    torch.save(ckpt, src)
    tok = ["--tokenizer", str(sample_corpus / "tokenizer")]
    out = tmp_path / "out.pt"
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(out), *tok]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"optimizer state {name}.exp_avg: shape (3,)" in err[0]
    assert not out.exists() and not list(tmp_path.glob("out.pt.tmp-*"))
    before = src.read_bytes()
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(src), "--overwrite",
                *tok]) == 2
    assert "is also --checkpoint" in capsys.readouterr().err and src.read_bytes() == before
    assert cli(["import-modernbert", "--checkpoint", str(src), "--out", str(tmp_path), *tok]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp-*"))
    yaml = tmp_path / "their.yaml"
    yaml.write_text(their_yaml(sample_corpus))
    assert cli(["import-modernbert", "--yaml", str(yaml), "--recipe", str(yaml), "--overwrite",
                *tok]) == 2
    assert "is also --yaml" in capsys.readouterr().err
