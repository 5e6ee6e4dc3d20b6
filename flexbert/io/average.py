"""`flexbert average`: the mean of several checkpoints' weights (checkpoint averaging, as for the
released ModernBERT base), written as a weights-only checkpoint or a published HF folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from flexbert.io.checkpoint_reader import INFO_KEY, load_weights, read_source
from flexbert.config import to_yaml
from flexbert.model import FlexBertForMaskedLM
from flexbert.io.publish import existing_dir, load_tokenizer, public_name, publish_model


def average_checkpoints(sources: Sequence[str], out: str, tokenizer: Optional[str] = None,
                        trust: bool = False) -> Path:
    """Mean of the weights (in fp32) of several checkpoints with the same architecture. `out`
    ending in `.pt` is a weights-only Composer-style checkpoint (`flexbert publish` and
    `model.init_from` read it); anything else becomes a published HF folder."""
    if len(sources) < 2:
        raise ValueError("average needs at least two checkpoints")
    total: dict[str, torch.Tensor] = {}
    infos, cfg = [], None
    for source in sources:
        read = read_source(source, trust, key="average")
        weights = {k: v for k, v in read.weights.items() if "inv_freq" not in k}
        info, cfg = read.info, cfg or read.config
        if total and (weights.keys() != total.keys() or any(
                weights[k].shape != total[k].shape for k in total)):
            raise ValueError(f"{source}: its weights do not match {sources[0]}'s (names or shapes)")
        for key, value in weights.items():
            total[key] = total.get(key, 0) + value.float()
        infos.append(info)
    mean = {k: v / len(sources) for k, v in total.items()}
    info = dict(infos[-1])
    info["averaged_from"] = [public_name(s) for s in sources]
    info["checkpoint"] = None
    if cfg is None:
        raise ValueError("no model config in any source; average Composer checkpoints written by "
                         "train.py or Hugging Face folders")
    info["model_config"] = to_yaml(cfg)
    if str(out).endswith(".pt"):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": {"model": {f"model.{k}": v for k, v in mean.items()},
                              "callbacks": {INFO_KEY: info}}}, out)
        return Path(out)
    model = FlexBertForMaskedLM(cfg)
    load_weights(model, mean, "average")
    tok = tokenizer or existing_dir(info.get("tokenizer"))
    return publish_model(model.eval(), out, info, load_tokenizer(tok))
