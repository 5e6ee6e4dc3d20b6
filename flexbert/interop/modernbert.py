"""`flexbert import-modernbert`: a Composer checkpoint of the ModernBERT research repository ->
a FlexBERT checkpoint that `load_path=` resumes (weights, optimizer state, training clock).

Their model is Composer's HuggingFaceModel around `FlexBertForMaskedLM` (`model.bert.*`,
`model.head.*`, `model.decoder.*`); ours is ComposerFlexBertMLM around FlexBertForMaskedLM
(`model.model.*`, same leaf names: the research code is where transformers' ModernBERT came from,
and its `convert_to_hf.py` renames only `bert.` and `encoder.layers.`). Optimizer state is keyed by
parameter name, as Composer stores it; it is regrouped into FlexBERT's parameter groups.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import torch

from flexbert.commands import command
from flexbert.config import ConfigError, ModelConfig, to_yaml
from flexbert.interop import modernbert_config as mc
from flexbert.interop import safe_load

# their Composer name prefix -> ours; anything else is not a weight we know
PREFIXES = (("model.bert.encoder.layers.", "model.model.layers."),
            ("model.bert.", "model.model."),
            ("model.head.", "model.head."),
            ("model.decoder.", "model.decoder."))
OPTIMIZERS = {"StableAdamW": "stable_adamw", "DecoupledAdamW": "decoupled_adamw"}
# Group keys that describe how the optimizer runs here, not the training state: FlexBERT's own.
LOCAL_GROUP_KEYS = {"params", "foreach", "triton", "fused", "capturable", "differentiable"}
# Counters carried: they drive the schedule, batch-size warmup and max_duration.
TIMESTAMP_COUNTERS = ("iteration", "batch", "sample", "token", "token_in_iteration")
# Counters of their data loader's epoch: zero, so FlexBERT's loader starts its own data from the
# beginning instead of Composer replaying (and discarding) that many batches of it.
EPOCH_COUNTERS = ("epoch", "epoch_in_iteration", "batch_in_epoch", "sample_in_epoch",
                  "token_in_epoch")


def flexbert_name(name: str) -> Optional[str]:
    for theirs, ours in PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def read_their_checkpoint(path: str, trust: bool) -> dict:
    """Their checkpoint's `state` (and `rng`), loaded without running their code."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: a folder; the import takes one monolithic .pt file (what their "
                         "DDP runs write), not a sharded checkpoint")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    ckpt = safe_load.load(path, trust)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state"), dict) \
            or not isinstance(ckpt["state"].get("model"), dict):
        raise ValueError(f"{path}: not a Composer checkpoint (no state.model)")
    return ckpt


def their_model_config(state: dict) -> Optional[dict]:
    """FlexBertConfig as Composer's HuggingFaceModel stored it (integrations metadata)."""
    try:
        content = state["integrations"]["huggingface"]["model"]["config"]["content"]
    except (KeyError, TypeError):
        return None
    return dict(content) if isinstance(content, dict) else None


def map_weights(path: str, weights: dict, model_keys: dict[str, torch.Size]) -> OrderedDict:
    """Rename every tensor; every FlexBERT weight must be filled, with the right shape."""
    out: OrderedDict = OrderedDict()
    unknown = []
    for name, tensor in weights.items():
        ours = flexbert_name(name)
        if ours is None or ours not in model_keys:
            unknown.append(name)
            continue
        if tuple(tensor.shape) != tuple(model_keys[ours]):
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the FlexBERT model "
                             f"built from its config expects {tuple(model_keys[ours])} ({ours})")
        out[ours] = tensor.detach().clone()
    missing = [k for k in model_keys if k not in out]
    if unknown or missing:
        raise ValueError(f"{path}: weights do not line up with the FlexBERT model from its config;"
                         f" not mapped: {unknown[:4]}, missing: {missing[:4]}")
    return out


def _their_param_names(weights: dict, groups: list[dict]) -> dict[int, str]:
    """Older Composer keyed optimizer state by position: their groups were [no decay, decay]
    (ndim <= 1 or `.bias`), each in `named_parameters` order, which is the model state's order
    without the tied decoder weight."""
    params = [n for n in weights if n != "model.decoder.weight"]
    if len(groups) == 1:
        ordered = params
    else:
        no_decay = [n for n in params if weights[n].ndim <= 1 or n.endswith(".bias")]
        ordered = no_decay + [n for n in params if n not in no_decay]
    return dict(enumerate(ordered))


def _their_groups(path: str, osd: dict, weights: dict) -> tuple[list[dict], dict]:
    groups, state = osd.get("param_groups"), osd.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise ValueError(f"{path}: optimizer state without param_groups/state")
    ids = [p for g in groups for p in g["params"]]
    if ids and all(isinstance(p, int) for p in ids):
        names = _their_param_names(weights, groups)
        groups = [{**g, "params": [names[p] for p in g["params"]]} for g in groups]
        state = {names[k]: v for k, v in state.items()}
    return groups, state


def map_optimizer(path: str, their: dict, weights: dict, cfg: ModelConfig) -> tuple[dict, str]:
    """Their optimizer state in FlexBERT's parameter groups: {class name: state dict}, and the
    FlexBERT optimizer name that reads it."""
    if len(their) != 1:
        raise ValueError(f"{path}: expected one optimizer, found {sorted(their)}")
    (qualname, osd), = their.items()
    if qualname not in OPTIMIZERS:
        raise ValueError(f"{path}: optimizer {qualname!r} has no FlexBERT equivalent (supported: "
                         f"{', '.join(OPTIMIZERS)}); import the weights alone with --no-optimizer")
    groups, state = _their_groups(path, osd, weights)
    group_of = {flexbert_name(n): g for g in groups for n in g["params"]}
    template = _template_groups(cfg, OPTIMIZERS[qualname], groups)
    out_groups = []
    for names, defaults in template:
        source = group_of.get(names[0])
        if source is None or any(group_of.get(n) is not source for n in names):
            raise ValueError(f"{path}: optimizer groups do not match FlexBERT's (no decay on "
                             f"norms and biases); first differing parameter: {names[0]}")
        carried = {k: v for k, v in source.items() if k not in LOCAL_GROUP_KEYS}
        out_groups.append({**defaults, **carried, "params": names})
    out_state = {}
    for name, value in state.items():
        ours = flexbert_name(name)
        if ours not in group_of:
            raise ValueError(f"{path}: optimizer state for {name}, which is not a parameter")
        out_state[ours] = _checked_state(path, name, dict(value), weights.get(name))
    return {qualname: {"state": out_state, "param_groups": out_groups}}, OPTIMIZERS[qualname]


def _checked_state(path: str, name: str, state: dict, param: Any) -> dict:
    """Per-parameter tensors (exp_avg, exp_avg_sq, ...) must have the parameter's shape, or the
    first step fails deep inside the optimizer; scalars (step) are left as they are."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and param is not None \
                and value.shape != param.shape:
            raise ValueError(f"{path}: optimizer state {name}.{key}: shape {tuple(value.shape)}, "
                             f"but the parameter is {tuple(param.shape)}; import the weights "
                             "alone with --no-optimizer")
    return state


def _template_groups(cfg: ModelConfig, optimizer: str, their_groups: list[dict]):
    """FlexBERT's groups for this model (names in Composer's `model.` namespace) and the group
    keys its optimizer expects, built on the meta device (no memory)."""
    from flexbert.model import FlexBertForMaskedLM
    from flexbert.train.recipe.schema import OptimizerConfig
    from flexbert.train.optim import build_optimizer

    with torch.device("meta"):
        model = FlexBertForMaskedLM(cfg)
    names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimizerConfig(name=optimizer,
                                                 decay_norms_and_biases=len(their_groups) == 1))
    return [([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
            for g in opt.param_groups]


def map_timestamp(state: dict) -> dict:
    """The training clock (wall-clock durations are not carried: they would need timedelta
    objects, and only the counters drive anything)."""
    ts = state.get("timestamp") or {}
    ts = ts.get("Timestamp", ts)
    counters = {k: int(ts[k]) for k in TIMESTAMP_COUNTERS if k in ts}
    return {"Timestamp": {**counters, **{k: 0 for k in EPOCH_COUNTERS}}}


def _plain(value: Any) -> bool:
    """What CONTRACTS point 2 allows in a FlexBERT checkpoint."""
    import numpy as np

    if isinstance(value, (dict, list, tuple)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return all(_plain(k) and _plain(v) for k, v in items)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor, torch.Size,
                                               np.ndarray, np.dtype, np.generic))


def phase_info(cfg: ModelConfig, state: dict, step: dict, source: str,
               max_seq_len: Optional[int], tokenizer: Optional[str]) -> dict:
    run_name = str(state.get("run_name") or "modernbert-import")
    return {"version": 1, "model_config": to_yaml(cfg), "phase": run_name, "run_name": run_name,
            "max_seq_len": max_seq_len, "tokenizer": tokenizer,
            "step": step.get("batch", 0), "tokens": step.get("token", 0),
            # rendered by model cards as "initialised from ..."
            "history": [{"init_from": f"{os.path.basename(source)} (ModernBERT research repo, "
                                      f"imported at step {step.get('batch', 0)})"}]}


def import_checkpoint(src: str, out: str, their_cfg: Optional[dict] = None, *,
                      trust: bool = False, optimizer: bool = True,
                      token_ids: Optional[dict] = None, max_seq_len: Optional[int] = None,
                      tokenizer: Optional[str] = None) -> tuple[ModelConfig, list]:
    """Write the FlexBERT checkpoint `out`; return its model config and what did not map.
    `their_cfg` (their YAML's model_config) is used when the checkpoint carries none."""
    ckpt = read_their_checkpoint(src, trust)
    state = ckpt["state"]
    their_cfg = their_model_config(state) or their_cfg
    if their_cfg is None:
        raise ConfigError(f"{src}: carries no model config (no Hugging Face metadata); pass the "
                          "YAML it was trained with: --yaml")
    if token_ids is None and mc.needs_tokenizer(their_cfg):
        raise ConfigError(f"{src}: vocab_size {their_cfg.get('vocab_size')} cannot hold "
                          "ModernBERT's special-token ids; pass the tokenizer: --tokenizer DIR")
    unmapped = mc.Unmapped()
    cfg = mc.build(mc.model_tree(their_cfg, src, unmapped, token_ids, report_unknown=False), src)
    weights = {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    new_state: dict[str, Any] = {"model": map_weights(src, weights, _model_shapes(cfg))}
    if optimizer and state.get("optimizers"):
        new_state["optimizers"], _ = map_optimizer(src, state["optimizers"], weights, cfg)
    elif optimizer:
        unmapped.add("optimizers", "the checkpoint has no optimizer state")
    step = map_timestamp(state)
    new_state["timestamp"] = step
    new_state["callbacks"] = {"PhaseInfo": phase_info(cfg, state, step["Timestamp"], src,
                                                      max_seq_len, tokenizer)}
    for key in ("rank_zero_seed", "run_name"):
        if isinstance(state.get(key), (int, str)):
            new_state[key] = state[key]
    unmapped.add("dataset_state", "their data loader's position: FlexBERT's loader starts its "
                 "data from the beginning (the step, sample and token counters carry on)")
    out_ckpt = {"state": new_state}
    if _plain(ckpt.get("rng")) and ckpt.get("rng") is not None:
        out_ckpt["rng"] = ckpt["rng"]
    _save(out_ckpt, out)
    return cfg, unmapped


def _model_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from flexbert.model import FlexBertForMaskedLM

    with torch.device("meta"):
        model = FlexBertForMaskedLM(cfg)
    return {f"model.{k}": v.shape for k, v in model.state_dict().items() if "inv_freq" not in k}


def _save(ckpt: dict, out: str) -> None:
    """Write atomically: a crash leaves the old file (or none), never half a checkpoint."""
    if not _plain(ckpt):
        raise ValueError(f"{out}: refusing to write non-plain objects into a FlexBERT checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# --- the command ---------------------------------------------------------------------------------

def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="their Composer checkpoint (.pt)")
    parser.add_argument("--out", help="the FlexBERT checkpoint to write (with --checkpoint)")
    parser.add_argument("--yaml", help="their training YAML (modernbert-*.yaml, flex-bert-*.yaml)")
    parser.add_argument("--recipe", help="the FlexBERT recipe to write (with --yaml)")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub name: special-token ids "
                        "(default: ModernBERT's ids; a recipe also gets it as data.tokenizer)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint that pickles their own classes, with those classes "
                             "replaced by inert stubs (none of their code runs)")
    parser.add_argument("--no-optimizer", action="store_true",
                        help="carry weights and clock only (a fresh optimizer on resume)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


@command("import-modernbert", "ModernBERT research-repo checkpoint / YAML -> FlexBERT checkpoint "
         "/ recipe", _args)
def import_modernbert(args: argparse.Namespace) -> int:
    from flexbert.interop import modernbert_yaml

    if not args.checkpoint and not args.yaml:
        raise ValueError("give --checkpoint with --out, and/or --yaml with --recipe")
    _check_outputs(args)
    token_ids = mc.tokenizer_ids(args.tokenizer) if args.tokenizer else None
    converted = modernbert_yaml.read(args.yaml, token_ids, args.tokenizer) if args.yaml else None
    if args.checkpoint:
        _, unmapped = import_checkpoint(
            args.checkpoint, args.out, converted.their_model if converted else None,
            trust=args.trust_checkpoint, optimizer=not args.no_optimizer, token_ids=token_ids,
            max_seq_len=converted.max_seq_len if converted else None, tokenizer=args.tokenizer)
        _report(args.checkpoint, unmapped)
        print(f"wrote FlexBERT checkpoint {args.out} (resume it with load_path={args.out})")
    if converted:
        load_path = str(Path(args.out).resolve()) if args.checkpoint else None
        modernbert_yaml.write(converted, args.recipe, load_path)
        _report(args.yaml, converted.unmapped)
        print(f"wrote FlexBERT recipe {args.recipe}")
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Each output must be a file path that is none of the inputs (--overwrite replaces an
    earlier output, never what is being read)."""
    inputs = {os.path.realpath(p): flag for p, flag in ((args.checkpoint, "--checkpoint"),
                                                        (args.yaml, "--yaml"),
                                                        (args.tokenizer, "--tokenizer")) if p}
    for source, target, flag in ((args.checkpoint, args.out, "--out"),
                                 (args.yaml, args.recipe, "--recipe")):
        if source and not target:
            raise ValueError(f"{source}: needs {flag} (where to write)")
        if not source or not target:
            continue
        if os.path.realpath(target) in inputs:
            raise ValueError(f"{flag} {target}: is also {inputs[os.path.realpath(target)]} (an "
                             "input); write to another file")
        if os.path.isdir(target):
            raise ValueError(f"{flag} {target}: is a directory; give the file to write")
        if os.path.exists(target) and not args.overwrite:
            raise ValueError(f"{target}: exists; pass --overwrite to replace it")


def _report(source: str, unmapped: list) -> None:
    for key, why in unmapped:
        print(f"{source}: not mapped: {key}: {why}", file=sys.stderr)
