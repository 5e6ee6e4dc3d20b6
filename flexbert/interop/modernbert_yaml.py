"""The ModernBERT research repository's training YAML (modernbert-*-pretrain /
context-extension / learning-rate-decay, flex-bert-*) -> a FlexBERT recipe (configs/*.yaml schema).

Every key of theirs is either mapped, or listed with the reason it was not (on stderr and as
comments at the top of the written recipe); none is dropped silently.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import yaml
from omegaconf import OmegaConf

from flexbert.config import ConfigError, load_yaml
from flexbert.interop import modernbert_config as mc

# their dotted key -> (FlexBERT recipe key, value converter)
def _time(value: Any) -> str:
    """A Composer time string ('10ba', '0.1dur'); ValueError for anything else (a list, a
    bare word), which the callers report naming the key."""
    from composer.core import Time

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a time string such as '1000ba', got {value!r}")
    text = str(value).replace("_", "").strip()
    if not isinstance(value, int):
        Time.from_timestring(text)
    return text


def _same(value: Any) -> Any:
    return value


DIRECT: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "run_name": ("run_name", str), "seed": ("seed", int),
    "max_duration": ("max_duration", _time), "eval_interval": ("eval_interval", _time),
    "save_interval": ("save_interval", _time), "save_folder": ("save_folder", str),
    "save_num_checkpoints_to_keep": ("save_num_checkpoints_to_keep", int),
    "autoresume": ("autoresume", bool), "auto_resume": ("autoresume", bool),
    "reset_time": ("reset_time", bool), "data_local": ("data_dir", str),
    "max_seq_len": ("data.max_seq_len", int), "mlm_probability": ("data.mlm_probability", float),
    "global_train_batch_size": ("batch.global_train_batch_size", int),
    "global_eval_batch_size": ("batch.global_eval_batch_size", int),
    "device_train_microbatch_size": ("trainer.device_train_microbatch_size", _same),
    "precision": ("trainer.precision", str), "progress_bar": ("trainer.progress_bar", bool),
    "log_to_console": ("trainer.log_to_console", bool),
    "console_log_interval": ("trainer.console_log_interval", _time),
    "eval_subset_num_batches": ("trainer.eval_subset_num_batches", int),
    "train_loader.dataset.shuffle": ("data.shuffle", bool),
    "train_loader.dataset.shuffle_seed": ("data.seed", int),
    "train_loader.num_workers": ("data.num_workers", int),
    "train_loader.batch_size_warmup_min_size": ("batch.warmup_start", int),
    "train_loader.batch_size_warmup_tokens": ("batch.warmup_tokens",
                                              lambda v: int(_time(v).removesuffix("tok"))),
    "eval_loader.dataset.mlm_probability": ("data.eval_mlm_probability", float),
    "optimizer.lr": ("optimizer.lr", float), "optimizer.eps": ("optimizer.eps", float),
    "optimizer.betas": ("optimizer.betas", lambda v: [float(b) for b in v]),
    "optimizer.weight_decay": ("optimizer.weight_decay", float),
    "optimizer.filter_bias_norm_wd": ("optimizer.decay_norms_and_biases", lambda v: not v),
    "optimizer.log_grad_norm": ("callbacks.grad_norm", bool),
    "model.disable_train_metrics": ("trainer.train_metrics", lambda v: not v),
    "callbacks.speed_monitor.window_size": ("callbacks.throughput_window", int),
    "algorithms.gradient_clipping.clipping_threshold": ("trainer.grad_clip_norm", float),
    "loggers.wandb.project": ("loggers.wandb.project", str),
    "loggers.wandb.entity": ("loggers.wandb.entity", str),
}

# their dotted key -> (the value that needs nothing, why it needs nothing)
ALREADY = {
    "count_padding_tokens": (False, "FlexBERT's token clock counts real tokens only"),
    "restart_override": (True, "FlexBERT always applies the recipe's LR and weight decay on load"),
    "model.name": ("flex_bert", ""),
    "train_loader.name": ("text", ""), "eval_loader.name": ("text", ""),
    "train_loader.dataset.split": ("train", "FlexBERT reads <data_dir>/train"),
    "eval_loader.dataset.split": ("val", "FlexBERT reads <data_dir>/val"),
    "train_loader.drop_last": (True, ""), "eval_loader.dataset.shuffle": (False, ""),
    "train_loader.sequence_packing": (True, "FlexBERT always packs"),
    "algorithms.gradient_clipping.clipping_type": ("norm", ""),
    "callbacks.lr_monitor": ({}, ""), "callbacks.log_grad_norm.batch_log_interval": (None, ""),
}

# their dotted key (or prefix) -> why FlexBERT has nothing for it
WHY_NOT = {
    "data_remote": "set data.streams with a remote when the shards live in object storage",
    "pretrain_data_local": "FlexBERT evaluates on <data_dir>/val of the training data",
    "pretrain_data_remote": "FlexBERT evaluates on <data_dir>/val of the training data",
    "device_eval_batch_size": "FlexBERT's eval microbatch follows device_train_microbatch_size",
    "device_eval_microbatch_size": "FlexBERT's eval microbatch follows "
                                   "device_train_microbatch_size",
    "eval_loader.dataset.local": "FlexBERT evaluates on <data_dir>/val of the training data",
    "eval_loader.dataset.remote": "FlexBERT evaluates on <data_dir>/val of the training data",
    "eval_loader.num_workers": "FlexBERT has one data.num_workers for both loaders",
    "eval_loader.drop_last": "FlexBERT's eval is one pass over the whole split",
    "eval_loader.sequence_packing": "FlexBERT packs evaluation batches too",
    "train_loader.dataset.streaming": "FlexBERT always reads MDS shards with MosaicML Streaming",
    "eval_loader.dataset.streaming": "FlexBERT always reads MDS shards with MosaicML Streaming",
    "model.recompute_metric_loss": "FlexBERT has no label smoothing to undo",
    "model.pretrained_checkpoint": "use model.init_from with a FlexBERT or Hugging Face model",
    "callbacks.scheduled_gc": "no FlexBERT callback (Python's collector runs as usual)",
    "callbacks.dataloader_speed": "no FlexBERT callback (throughput is logged)",
    "callbacks.runtime_estimator": "no FlexBERT callback",
    "callbacks.packing_efficiency.log_interval": "FlexBERT logs packing efficiency every batch",
    "init_from_checkpoint": "their tiling of a smaller model's weights; start from weights with "
                            "model.init_from",
    "scheduler.t_max": "FlexBERT's schedules end at max_duration",
}
HANDLED = {"load_path", "tokenizer_name", "model.tokenizer_name", "model.pretrained_model_name"}
# Variables their YAML interpolates into other values (load_path's {name} placeholders).
VARIABLES = re.compile(r".*_run_name$")
SCHEDULERS = {"warmup_stable_decay": ("t_warmup", "t_decay", "alpha_f"),
              "constant_with_warmup": ("t_warmup",),
              "one_minus_sqrt": ("t_warmup", "t_decay", "alpha_f")}
# their optimizer -> (FlexBERT's, whether their weight decay is already decoupled from the LR)
OPTIMIZERS = {"decoupled_stableadamw": ("stable_adamw", True),
              "stableadamw": ("stable_adamw", False),
              "decoupled_adamw": ("decoupled_adamw", True), "adamw": ("decoupled_adamw", False)}


@dataclass
class Converted:
    source: str
    recipe: dict
    unmapped: mc.Unmapped
    their_model: dict
    max_seq_len: Optional[int]
    their_load_path: Optional[str] = None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree and not prefix.endswith("model_config"):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def read(path: str, token_ids: Optional[dict] = None, tokenizer: Optional[str] = None) -> Converted:
    """Map their YAML; raises ConfigError (naming the key) for what cannot be built."""
    try:
        tree = OmegaConf.to_container(load_yaml(path), resolve=True)
    except ConfigError:
        raise
    except Exception as err:  # a ${...} that names nothing
        raise ConfigError(f"{path}: cannot resolve interpolations: {err}") from None
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{path}: the file is empty; expected their training YAML "
                          "(modernbert-*.yaml, flex-bert-*.yaml)")
    flat = _flat(tree)
    flat.pop("model.model_config", None)
    their_model = dict((tree.get("model") or {}).get("model_config") or {})
    out = Converted(path, {}, mc.Unmapped(), their_model,
                    int(flat["max_seq_len"]) if "max_seq_len" in flat else None)
    if flat.get("model.name", "flex_bert") != "flex_bert":
        raise ConfigError(f"{path}: model.name: {flat['model.name']!r}: only their flex_bert "
                          "model maps onto FlexBERT")
    for key, value in flat.items():
        _one(out, key, value, flat)
    if not tree.get("model"):  # else every model key would silently be BERT-base's
        raise ConfigError(f"{path}: model: missing; expected their training YAML "
                          "(modernbert-*.yaml, flex-bert-*.yaml) with its model section")
    _tokenizer(out, flat, tokenizer)
    _scheduler(out, tree.get("scheduler") or {}, flat)
    _optimizer(out, tree.get("optimizer") or {})
    _load_path(out, flat)
    seq = out.max_seq_len or 0
    if token_ids is None and mc.needs_tokenizer(out.their_model):
        token_ids = _their_tokenizer_ids(path, flat)
    model = mc.model_tree(out.their_model, path, out.unmapped, token_ids,
                          max_position_embeddings=max(8192, seq))
    # Built now so a bad value fails here, naming the key; written whole, in FlexBERT's order.
    out.recipe["model"] = OmegaConf.to_container(OmegaConf.structured(mc.build(model, path)))
    # Their packer is one stream per worker; FlexBERT's partitions are shared evenly by workers.
    workers = int(out.recipe.get("data", {}).get("num_workers", 0))
    mc.put(out.recipe, "data.pack_parts", max(1, workers))
    if out.their_model.get("compile_model") is not None:
        mc.put(out.recipe, "trainer.compile", bool(out.their_model["compile_model"]))
    if "loggers.wandb.project" in flat or "loggers.wandb.entity" in flat:
        mc.put(out.recipe, "loggers.wandb.enabled", True)
        mc.put(out.recipe, "loggers.wandb.mode", "online")
    return out


def _their_tokenizer_ids(path: str, flat: dict) -> dict:
    name = flat.get("tokenizer_name") or flat.get("model.tokenizer_name")
    if not name:
        raise ConfigError(f"{path}: tokenizer_name: not set, and vocab_size needs the "
                          "tokenizer's special-token ids; pass --tokenizer DIR")
    try:
        return mc.tokenizer_ids(str(name))
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120]
        raise ConfigError(f"{path}: tokenizer_name: cannot read the special-token ids of "
                          f"{name!r} ({reason}); pass --tokenizer DIR") from None


def _one(out: Converted, key: str, value: Any, flat: dict) -> None:
    if key in DIRECT:
        target, convert = DIRECT[key]
        if value is None:
            return
        try:
            mc.put(out.recipe, target, convert(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{out.source}: {key}: {value!r} is not a valid value for "
                              f"FlexBERT's {target}") from None
        return
    if key in ALREADY:
        expected, why = ALREADY[key]
        if value != expected and not (expected is None):
            out.unmapped.add(key, f"{value!r}: FlexBERT does only {expected!r}" +
                             (f" ({why})" if why else ""))
        return
    if _is_echo(key, value, flat) or VARIABLES.match(key) or key in HANDLED \
            or key.startswith(("scheduler.", "optimizer.")):
        return  # handled by the dedicated steps in `read`
    if key == "data_remote" and not value:
        return
    if key in WHY_NOT or key.split(".")[0] in WHY_NOT:
        out.unmapped.add(key, WHY_NOT.get(key) or WHY_NOT[key.split(".")[0]])
    elif key.startswith("algorithms."):
        out.unmapped.add(key, "no FlexBERT algorithm of that name (gradient_clipping maps)")
    elif key.startswith("callbacks."):
        out.unmapped.add(key, "no FlexBERT callback of that name")
    else:
        out.unmapped.add(key, "not a key FlexBERT knows how to map")


def _is_echo(key: str, value: Any, flat: dict) -> bool:
    """Loader keys that repeat a top-level value (their YAML interpolates them) map through it."""
    leaf = key.rsplit(".", 1)[-1]
    top = {"local": "data_local", "remote": "data_remote", "tokenizer_name": "tokenizer_name",
           "max_seq_len": "max_seq_len", "mlm_probability": "mlm_probability"}.get(leaf)
    if not key.startswith(("train_loader.dataset.", "eval_loader.dataset.")) or top is None:
        return False
    if key == "eval_loader.dataset.mlm_probability":
        return False
    return value == flat.get(top) or (not value and not flat.get(top))


def _tokenizer(out: Converted, flat: dict, tokenizer: Optional[str]) -> None:
    name = tokenizer or flat.get("tokenizer_name") or flat.get("model.tokenizer_name")
    if name:
        mc.put(out.recipe, "data.tokenizer", str(name))
    base = flat.get("model.pretrained_model_name")
    if base not in (None, "bert-base-uncased"):
        out.unmapped.add("model.pretrained_model_name", f"{base!r}: model defaults are taken from "
                         "bert-base-uncased's config; set every model_config key explicitly")


def _scheduler(out: Converted, sched: dict, flat: dict) -> None:
    name = sched.get("name")
    times = {}
    for key, value in sched.items():
        if key == "name":
            continue
        try:
            times[key] = _time(value) if key.startswith("t_") else float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{out.source}: scheduler.{key}: {value!r} is not valid "
                              f"({err})") from None
    if name == "linear_decay_with_warmup":  # = warmup, then linear decay over the rest of the run
        decay = _rest_of_run(times.get("t_warmup", "0dur"), flat.get("max_duration"))
        if decay is None:
            out.unmapped.add("scheduler.t_warmup", "linear_decay_with_warmup needs t_warmup in dur "
                             "or in max_duration's unit; kept FlexBERT's default schedule")
            return
        name, times = "warmup_stable_decay", {**times, "t_decay": decay}
    if name not in SCHEDULERS:
        out.unmapped.add("scheduler.name", f"{name!r} has no FlexBERT schedule (supported: "
                         f"{', '.join([*SCHEDULERS, 'linear_decay_with_warmup'])})")
        return
    recipe = {"name": name}
    for key, value in times.items():
        if key in SCHEDULERS[name]:
            recipe[key] = value
        elif f"scheduler.{key}" in WHY_NOT:
            out.unmapped.add(f"scheduler.{key}", WHY_NOT[f"scheduler.{key}"])
        else:
            out.unmapped.add(f"scheduler.{key}", f"{name} in FlexBERT takes "
                             f"{', '.join(SCHEDULERS[name])}")
    out.recipe["scheduler"] = recipe


def _rest_of_run(warmup: str, max_duration: Any) -> Optional[str]:
    from composer.core import Time, TimeUnit

    w = Time.from_timestring(warmup)
    if w.unit == TimeUnit.DURATION:
        return f"{1.0 - w.value}dur"
    if max_duration is None:
        return None
    try:
        end = Time.from_timestring(_time(max_duration))
    except ValueError:
        return None  # reported under max_duration by _one
    return f"{end.value - w.value}{end.unit.value}" if end.unit == w.unit else None


def _optimizer(out: Converted, opt: dict) -> None:
    name = opt.get("name")
    if name is None:
        return
    if name not in OPTIMIZERS:
        out.unmapped.add("optimizer.name", f"{name!r} has no FlexBERT optimizer (supported: "
                         f"{', '.join(OPTIMIZERS)})")
        return
    ours, decoupled = OPTIMIZERS[name]
    mc.put(out.recipe, "optimizer.name", ours)
    if not decoupled and "weight_decay" in opt and "lr" in opt:
        # Their coupled decay shrinks by lr * wd per step; FlexBERT's decoupled decay by
        # wd * lr / peak_lr, so the same shrinkage at the peak needs wd * peak_lr.
        mc.put(out.recipe, "optimizer.weight_decay", float(opt["weight_decay"]) * float(opt["lr"]))
        out.unmapped.add("optimizer.weight_decay", f"{name} couples weight decay to the LR; "
                         "converted to FlexBERT's decoupled value weight_decay * lr")
    for key in opt:
        if f"optimizer.{key}" not in DIRECT and key != "name":
            out.unmapped.add(f"optimizer.{key}", f"{ours} in FlexBERT has no such setting")


def _load_path(out: Converted, flat: dict) -> None:
    value = flat.get("load_path")
    if not value:
        return
    names = {k: v for k, v in flat.items() if isinstance(v, str) and "." not in k}
    try:
        out.their_load_path = str(value).format(**names)
    except (KeyError, IndexError):
        out.their_load_path = str(value)


def write(conv: Converted, out_path: str, load_path: Optional[str] = None) -> None:
    """The recipe YAML with the unmapped keys as comments at the top; written atomically."""
    recipe = dict(conv.recipe)
    if load_path:
        recipe["load_path"] = load_path
    elif conv.their_load_path:
        recipe["load_path"] = conv.their_load_path
        conv.unmapped.add("load_path", f"{conv.their_load_path}: their checkpoint; convert it with "
                          "flexbert import-modernbert --checkpoint and point load_path at the "
                          "result")
    lines = [f"# FlexBERT recipe converted by `flexbert import-modernbert` from {conv.source}",
             "# Their keys that did not map (and why):"]
    lines += [f"#   {key}: {why}" for key, why in conv.unmapped] or ["#   (none)"]
    body = yaml.safe_dump(_order(recipe), sort_keys=False, default_flow_style=False)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n" + body)
    os.replace(tmp, out_path)


def _order(recipe: dict) -> dict:
    first = ["run_name", "data_dir", "seed", "max_duration", "eval_interval", "save_folder",
             "save_interval", "save_num_checkpoints_to_keep", "autoresume", "load_path",
             "reset_time", "model", "data", "batch", "optimizer", "scheduler", "trainer"]
    return {**{k: recipe[k] for k in first if k in recipe},
            **{k: v for k, v in recipe.items() if k not in first}}
