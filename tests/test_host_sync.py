"""The training step needs no device->host sync once the collator has sent its indices.

A data-dependent op (nonzero, boolean indexing, .item(), repeat_interleave without output_size)
cannot run on the `meta` device, which has shapes but no data; on a GPU each such op stalls the
host. Running the step on `meta` therefore fails exactly where a GPU step would sync.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexbert.data import collate_rows, split_packed_batch, token_indices
from flexbert.model import FlexBertForMaskedLM
from flexbert.model.attention.layout import describe_batch
from helpers import tiny_config


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = [[rng.integers(5, 100, n) for n in (20, 11)], [rng.integers(5, 100, 30)], [rng.integers(5, 100, 7)]]
    c = collate_rows(rows, 40, 0)
    b = {k: torch.as_tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    b["max_seqlen"] = c["max_seqlen"]
    chosen = torch.rand(b["input_ids"].shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    b["labels"] = torch.where(chosen & (b["attention_mask"] == 1), b["input_ids"], -100)
    b.update(token_indices(b["attention_mask"], b["labels"]))
    return b


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_token_indices_match_boolean_selection():
    b = _batch()
    real = b["attention_mask"].flatten().bool()
    assert torch.equal(b["indices"], real.nonzero().squeeze(1))
    labels_T = b["labels"].flatten()[real]
    assert torch.equal(labels_T[b["prediction_indices"]], labels_T[labels_T != -100])
    assert b["prediction_indices"].numel() == int((b["labels"] != -100).sum())


@pytest.mark.parametrize("padding", ["padded", "unpadded"])
def test_indices_give_the_same_loss_and_logits(padding):
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(padding=padding, sparse_prediction=True))
    b = _batch()
    with_idx = model(**b)
    plain = model(**{k: v for k, v in b.items() if k not in ("indices", "prediction_indices")})
    assert with_idx.logits.shape[0] == b["prediction_indices"].numel()
    torch.testing.assert_close(with_idx.logits, plain.logits)
    torch.testing.assert_close(with_idx.loss, plain.loss)


def test_training_step_runs_on_meta_with_collator_indices():
    model = FlexBertForMaskedLM(tiny_config(padding="padded", sparse_prediction=True)).to("meta")
    out = model(**_to(_batch(), "meta"))
    out.loss.backward()
    assert out.logits.shape == (_batch()["prediction_indices"].numel(), 128)
    assert model.decoder.weight.grad is not None and model.decoder.weight.grad.is_meta


def test_step_without_indices_needs_data_so_the_meta_check_can_fail():
    model = FlexBertForMaskedLM(tiny_config(padding="padded", sparse_prediction=True)).to("meta")
    b = {k: v for k, v in _to(_batch(), "meta").items() if k not in ("indices", "prediction_indices")}
    with pytest.raises((NotImplementedError, RuntimeError)):
        model(**b)


def test_unpadding_runs_on_meta_with_collator_indices():
    b = _to(_batch(), "meta")
    layout = describe_batch(b["input_ids"], b["attention_mask"], b["position_ids"], b["cu_seqlens"],
                            b["max_seqlen"], "unpadded", b["indices"])
    ids_T = layout.to_layout(b["input_ids"])
    assert ids_T.shape == (int(_batch()["attention_mask"].sum()),)
    assert layout.doc_ids_L.shape == ids_T.shape and layout.position_ids_L.shape == ids_T.shape
    assert layout.rows_of_tokens(b["prediction_indices"]).shape == b["prediction_indices"].shape


def test_microbatch_split_recomputes_indices():
    b = _batch()
    for part in split_packed_batch(b, 2):
        fresh = token_indices(part["attention_mask"], part["labels"])
        assert torch.equal(part["indices"], fresh["indices"])
        assert torch.equal(part["prediction_indices"], fresh["prediction_indices"])
        assert int(part["indices"].max()) < part["attention_mask"].numel()


def _composer_step(spec, model, host_batch: dict, microbatch_rows: int, device: str) -> None:
    """One training step in the order Composer 0.32.1's Trainer makes its calls (trainer.py:
    the fit loop, `_train_batch`, `_train_microbatches`, `_train_microbatch`), with
    accumulate_train_batch_on_tokens as build_trainer sets it; only the device is ours."""
    import copy

    batch = spec.batch_transforms(host_batch)
    assert spec.get_num_samples_in_batch(batch) > 0      # the loop's counters, host batch
    assert spec.get_num_tokens_in_batch(batch) > 0
    microbatches = spec.split_batch(batch, microbatch_rows)
    total = sum(spec.get_num_tokens_in_batch(b, token_type="loss_generating") for b in microbatches)
    for microbatch in microbatches:
        microbatch = spec.microbatch_transforms(_to(microbatch, device))  # batch_to_device
        kept = copy.deepcopy(microbatch)
        size = spec.get_num_tokens_in_batch(microbatch, token_type="loss_generating")
        outputs = model(microbatch)
        loss = model.loss(outputs, microbatch)
        (loss * (size / total)).backward()
        for metric in model.get_metrics(is_train=True).values():
            model.update_metric(kept, outputs, metric.to(device))


def test_whole_composer_step_with_the_data_spec_runs_on_meta():
    """The DataSpec's counts included: a count read from device tensors would need data here."""
    from flexbert.data import build_data_spec as data_spec
    from flexbert.runtime.composer_model import ComposerFlexBertMLM

    model = ComposerFlexBertMLM(FlexBertForMaskedLM(tiny_config(padding="padded",
                                                                sparse_prediction=True)))
    model.to("meta")
    _composer_step(data_spec([]), model, _batch(), 2, "meta")
    assert model.model.decoder.weight.grad is not None and model.model.decoder.weight.grad.is_meta


def test_data_spec_counts_are_the_batch_sizes():
    from flexbert.data import build_data_spec as data_spec

    spec, b = data_spec([]), _batch()
    assert spec.get_num_tokens_in_batch(b) == int(b["attention_mask"].sum())
    assert spec.get_num_tokens_in_batch(b, "loss_generating") == int((b["labels"] != -100).sum())
    assert spec.get_num_samples_in_batch(b) == b["input_ids"].shape[0]
