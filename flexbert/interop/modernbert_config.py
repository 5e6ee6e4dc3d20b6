"""The ModernBERT research repository's model config (its FlexBertConfig keys, as in a YAML's
`model.model_config` or a checkpoint's Hugging Face metadata) -> a FlexBERT model tree.

Shared by the checkpoint and the recipe importers. Values FlexBERT cannot build raise ConfigError
naming the key; keys that change nothing FlexBERT builds are listed with the reason.
"""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf

from flexbert.config import ConfigError, ModelConfig
from flexbert.model import model_config

# Their model starts from bert-base-uncased's BertConfig (`pretrained_model_name`) and then
# FlexBertConfig's defaults; a YAML sets only what differs.
THEIR_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
    "attention_layer": "base", "attention_probs_dropout_prob": 0.0, "attn_out_bias": False,
    "attn_out_dropout_prob": 0.0, "attn_qkv_bias": False, "bert_layer": "prenorm",
    "decoder_bias": True, "embed_dropout_prob": 0.0, "embed_norm": True, "final_norm": False,
    "embedding_layer": "absolute_pos", "loss_function": "cross_entropy", "loss_kwargs": {},
    "mlp_dropout_prob": 0.0, "mlp_in_bias": False, "mlp_layer": "mlp", "mlp_out_bias": False,
    "norm_kwargs": {}, "normalization": "rmsnorm", "padding": "unpadded", "head_pred_act": "silu",
    "head_pred_bias": False, "head_pred_norm": True, "head_class_dropout": 0.0,
    "pooling_type": "cls", "rotary_emb_dim": None, "rotary_emb_base": 10000.0,
    "rotary_emb_scale_base": None, "rotary_emb_interleaved": False, "init_method": "default",
    "init_std": 0.02, "init_cutoff_factor": 2.0, "skip_first_prenorm": False,
    "sliding_window": -1, "global_attn_every_n_layers": -1, "local_attn_rotary_emb_base": -1,
    "masked_prediction": False, "tie_word_embeddings": True, "num_initial_layers": 1,
    "initial_attention_layer": None, "initial_bert_layer": None, "initial_mlp_layer": None,
}

# their key -> FlexBERT model key, value unchanged
RENAMED = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
    "num_attention_heads": "attention.num_heads", "intermediate_size": "mlp.intermediate_size",
    "attention_probs_dropout_prob": "attention.dropout",
    "attn_out_dropout_prob": "attention.out_dropout", "attn_qkv_bias": "attention.qkv_bias",
    "attn_out_bias": "attention.out_bias", "embed_dropout_prob": "embeddings.dropout",
    "embed_norm": "embeddings.norm", "final_norm": "final_norm", "mlp_dropout_prob": "mlp.dropout",
    "padding": "padding", "decoder_bias": "head.decoder_bias", "head_pred_bias": "head.dense_bias",
    "head_class_dropout": "classifier.dropout", "pooling_type": "classifier.pooling",
    "init_std": "init.std", "init_cutoff_factor": "init.cutoff_factor",
    "masked_prediction": "sparse_prediction", "tie_word_embeddings": "head.tie_word_embeddings",
}

ACTIVATIONS = {"gelu": "gelu", "silu": "silu", "relu": "relu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}

# their key -> {their value: FlexBERT value}, written to the FlexBERT key
CHOICES = {
    "bert_layer": ("layer", {"prenorm": "prenorm", "postnorm": "postnorm",
                             "parallel_prenorm": "parallel"}),
    "mlp_layer": ("mlp.type", {"glu": "glu", "mlp": "mlp", "parallel_glu": "glu",
                              "parallel_mlp": "mlp"}),
    "normalization": ("norm.type", {"layernorm": "layernorm", "triton_layernorm": "layernorm",
                                    "rmsnorm": "rmsnorm", "triton_rmsnorm": "rmsnorm"}),
    "embedding_layer": ("embeddings.type", {"sans_pos": "token", "absolute_pos": "token"}),
    "hidden_act": ("mlp.activation", ACTIVATIONS),
    "head_pred_act": ("head.activation", ACTIVATIONS),
}

# Keys that are fine only at one value (FlexBERT has no switch for the others).
FIXED = {
    "rotary_emb_dim": (None, "rotary over the whole head dim"),
    "rotary_emb_scale_base": (None, "no xPos scaling"),
    "rotary_emb_interleaved": (False, "non-interleaved rotary"),
    "head_pred_norm": (True, "a norm in the MLM head"),
    "initial_attention_layer": (None, "the same attention in every layer"),
    "initial_bert_layer": (None, "the same layer type in every layer"),
    "initial_mlp_layer": (None, "the same MLP in every layer"),
}

INITS = {"full_megatron": "megatron", "megatron": "megatron", "default": "normal",
         "normal": "normal"}

# Read, with the reason they change nothing FlexBERT builds.
NO_EFFECT = {
    "unpad_embeddings": "FlexBERT's `padding` decides the layout",
    "pad_logits": "logits are returned in the layout FlexBERT needs",
    "compile_model": "trainer.compile compiles the whole model (recipe key)",
    "use_fa2": "model.attention.kernel picks the kernel",
    "deterministic_fa2": "no deterministic flash-attn switch; the kernel is model.attention.kernel",
    "allow_embedding_resizing": "FlexBERT's vocab_size is fixed by the config",
    "activation_function": "not read by their FlexBERT model (hidden_act is)",
    "sparse_prediction": "not read by their FlexBERT MLM (masked_prediction is)",
    "init_small_embedding": "initialisation does not matter for imported weights",
    "num_initial_layers": "only used with initial_* layer types",
    "use_sdpa_attn_mask": "FlexBERT's kernels build their own masks",
    "head_class_act": "classification heads are set up when fine-tuning",
    "head_class_bias": "classification heads are set up when fine-tuning",
    "head_class_norm": "classification heads are set up when fine-tuning",
    "local_attn_rotary_emb_dim": "rotary covers the whole head dim",
    "layer_norm_eps": "their norms take eps from norm_kwargs",
}

# Consumed here by hand (see `model_tree`).
SPECIAL = {"max_position_embeddings", "mlp_in_bias", "mlp_out_bias", "norm_kwargs",
           "skip_first_prenorm", "sliding_window",
           "global_attn_every_n_layers", "rotary_emb_base", "local_attn_rotary_emb_base",
           "loss_function", "loss_kwargs", "init_method", "pad_token_id", "bos_token_id",
           "eos_token_id", "cls_token_id", "sep_token_id", "mask_token_id"}

TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id",
              "mask_token_id")


class Unmapped(list):
    """(key, why) pairs for what the import could not carry over."""

    def add(self, key: str, why: str) -> None:
        self.append((key, why))


def put(tree: dict, path: str, value: Any) -> None:
    """tree[a][b][c] = value for path 'a.b.c', creating the levels."""
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _fail(source: str, key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{source}: model_config.{key}={value!r}: {why}")


def model_tree(their: dict, source: str, unmapped: Unmapped,
               token_ids: Optional[dict[str, int]] = None,
               max_position_embeddings: int = 8192, report_unknown: bool = True) -> dict:
    """FlexBERT model keys for their config `their` (their keys; missing ones take their
    defaults). `token_ids` (from the tokenizer) win over the config's, which bert-base-uncased
    fills with its own ids."""
    cfg = {**THEIR_DEFAULTS, **{k: v for k, v in their.items() if v is not None or k in FIXED}}
    # a learned position table keeps its size; rotary needs none
    absolute = cfg["attention_layer"] not in ("rope", "rope_parallel")
    tree: dict = {"max_position_embeddings": cfg["max_position_embeddings"] if absolute
                  else max_position_embeddings}
    for key, target in RENAMED.items():
        put(tree, target, cfg[key])
    for key, (target, choices) in CHOICES.items():
        if cfg[key] not in choices:
            _fail(source, key, cfg[key], f"FlexBERT has no equivalent; supported: "
                  f"{', '.join(sorted(choices))}")
        put(tree, target, choices[cfg[key]])
    for key, (value, meaning) in FIXED.items():
        if cfg.get(key, value) != value:
            _fail(source, key, cfg[key], f"FlexBERT supports only {value!r} ({meaning})")
    put(tree, "position.type", _position(cfg, source))
    _biases_and_norms(cfg, tree, source, unmapped)
    _attention_pattern(cfg, tree, source)
    _loss_and_init(cfg, tree, source, unmapped)
    _tokens(cfg, tree, token_ids)
    if report_unknown:
        known = set(THEIR_DEFAULTS) | set(RENAMED) | set(CHOICES) | set(NO_EFFECT) | SPECIAL
        for key in sorted(set(their) - known):
            unmapped.add(f"model_config.{key}", "not a key FlexBERT knows how to map")
    return tree


def _position(cfg: dict, source: str) -> str:
    """Their rotary attention, or their learned position table in the embeddings."""
    if cfg["attention_layer"] in ("rope", "rope_parallel"):
        return "rope"
    if cfg["attention_layer"] in ("base", "parallel") and cfg["embedding_layer"] == "absolute_pos":
        return "absolute"
    _fail(source, "attention_layer", cfg["attention_layer"], "FlexBERT supports rope, or base "
          "attention with embedding_layer absolute_pos")
    return ""


def _biases_and_norms(cfg: dict, tree: dict, source: str, unmapped: Unmapped) -> None:
    if cfg["mlp_in_bias"] != cfg["mlp_out_bias"]:
        _fail(source, "mlp_out_bias", cfg["mlp_out_bias"], "FlexBERT has one mlp.bias for both "
              f"MLP projections; mlp_in_bias is {cfg['mlp_in_bias']!r}")
    put(tree, "mlp.bias", cfg["mlp_in_bias"])
    norm = dict(cfg["norm_kwargs"] or {})
    put(tree, "norm.eps", float(norm.pop("eps", 1e-5)))  # torch's LayerNorm default
    if tree["norm"]["type"] == "layernorm":
        put(tree, "norm.bias", bool(norm.pop("bias", True)))
    norm.pop("bias", None)
    for key in norm:
        unmapped.add(f"model_config.norm_kwargs.{key}", "FlexBERT's norms take eps and bias only")
    put(tree, "first_layer_attn_norm", not cfg["skip_first_prenorm"])


def _attention_pattern(cfg: dict, tree: dict, source: str) -> None:
    window, every = cfg["sliding_window"], cfg["global_attn_every_n_layers"]
    if window > 0 and every <= 0:
        _fail(source, "global_attn_every_n_layers", every, "every layer local is not expressible; "
              "FlexBERT's layer 0 is always global (set a positive global_attn_every_n_layers)")
    put(tree, "attention.local_window", window if window > 0 else 0)
    put(tree, "attention.global_every_n_layers", every if window > 0 else 1)
    theta = float(cfg["rotary_emb_base"])
    local = cfg["local_attn_rotary_emb_base"]
    put(tree, "position.global_theta", theta)
    put(tree, "position.local_theta", float(local) if local and local > 0 else theta)


def _loss_and_init(cfg: dict, tree: dict, source: str, unmapped: Unmapped) -> None:
    if cfg["loss_function"] not in ("cross_entropy", "fa_cross_entropy"):
        _fail(source, "loss_function", cfg["loss_function"],
              "FlexBERT trains with plain cross-entropy (cross_entropy, fa_cross_entropy)")
    for key, value in (cfg["loss_kwargs"] or {}).items():
        if (key, value) not in (("reduction", "mean"), ("return_z_loss", False)):
            unmapped.add(f"model_config.loss_kwargs.{key}",
                         f"{value!r}: FlexBERT's loss is the mean cross-entropy over masked tokens")
    init = INITS.get(cfg["init_method"])
    if init is None:
        unmapped.add("model_config.init_method", f"{cfg['init_method']!r} has no FlexBERT "
                     f"equivalent (kept init.type megatron); supported: {', '.join(INITS)}")
    else:
        put(tree, "init.type", init)


def _tokens(cfg: dict, tree: dict, token_ids: Optional[dict]) -> None:
    if token_ids:
        tree.update({k: int(v) for k, v in token_ids.items() if k in TOKEN_KEYS})
        return
    # else FlexBERT's defaults: ModernBERT's tokenizer ids (their config's pad id is BERT's)


def needs_tokenizer(their: dict) -> bool:
    """ModernBERT's token ids (FlexBERT's defaults) do not fit a smaller vocabulary."""
    vocab = their.get("vocab_size") or THEIR_DEFAULTS["vocab_size"]
    return vocab <= max(getattr(ModelConfig, k) for k in TOKEN_KEYS)


def build(tree: dict, source: str) -> ModelConfig:
    return model_config(OmegaConf.create(tree), source=source, prefix="model")


def tokenizer_ids(path: str) -> dict[str, int]:
    """Special-token ids of a tokenizer folder or hub name, in FlexBERT's model keys."""
    from flexbert.io.checkpoint_reader import load_tokenizer_safely

    tok = load_tokenizer_safely(path)
    ids = {"cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id,
           "pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id}
    if any(v is None for v in ids.values()):
        missing = [k for k, v in ids.items() if v is None]
        raise ConfigError(f"{path}: tokenizer has no {', '.join(missing)}")
    ids["bos_token_id"], ids["eos_token_id"] = ids["cls_token_id"], ids["sep_token_id"]
    return ids
