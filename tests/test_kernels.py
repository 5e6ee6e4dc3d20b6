"""Every kernel that runs here matches the sdpa reference on outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from flexbert.model import KERNELS
from flexbert.model.attention.kernels import flex_cpu_backward
from flexbert.model import FlexBertForMaskedLM
from flexbert.model.attention.layout import describe_batch
from tests.helpers import copy_model, mixed_batch, tiny_config

CPU_KERNELS = ["flex"]


def _qkv(tokens: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(tokens, 4, 8, generator=gen, requires_grad=True) for _ in range(3)]


def _packed_layout(layout: str):
    # Three rows, several documents per row (position ids restart), pads at the row ends.
    mask = torch.tensor([[1] * 20 + [0] * 4, [1] * 24, [1] * 7 + [0] * 17])
    positions = torch.tensor([list(range(12)) + list(range(8)) + [0] * 4,
                              list(range(5)) + list(range(19)),
                              list(range(7)) + [0] * 17])
    ids = torch.ones_like(mask)
    return describe_batch(ids, mask, positions, layout=layout), mask


def _grads_here(kernel: str) -> bool:
    """Newer torch releases have no FlexAttention backward on CPU; CUDA tests cover it there."""
    return kernel != "flex" or flex_cpu_backward()


def _attend(kernel, layout, mask, window):
    q, k, v = _qkv(int(mask.sum()))
    if not _grads_here(kernel):
        args = [layout.from_tokens(x.detach()) for x in (q, k, v)]
        return layout.to_tokens(KERNELS.get(kernel)(*args, layout, window, 0.0)), None
    args = [layout.from_tokens(x) for x in (q, k, v)]
    out = layout.to_tokens(KERNELS.get(kernel)(*args, layout, window, 0.0))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [x.grad for x in (q, k, v)]


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("layout_name", ["padded", "unpadded"])
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_kernel_matches_reference_on_packed_batches(kernel, layout_name, window):
    layout, mask = _packed_layout(layout_name)
    ref_out, ref_grads = _attend("sdpa", _packed_layout("padded")[0], mask, window)
    out, grads = _attend(kernel, layout, mask, window)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for got, want in zip(grads or [], ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sdpa_unpadded_equals_sdpa_padded():
    ref_out, ref_grads = _attend("sdpa", _packed_layout("padded")[0], _packed_layout("padded")[1], 3)
    out, grads = _attend("sdpa", *_packed_layout("unpadded"), 3)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-5, rtol=0)


def test_documents_do_not_see_each_other():
    """Changing one document's values must leave the other documents' outputs untouched."""
    layout, mask = _packed_layout("unpadded")
    q, k, v = (x.detach() for x in _qkv(int(mask.sum())))
    before = KERNELS.get("flex")(q, k, v, layout, None, 0.0)
    v2 = v.clone()
    v2[12:20] += 5.0  # the second document of row 0
    after = KERNELS.get("flex")(q, k, v2, layout, None, 0.0)
    unchanged = torch.ones(len(v), dtype=torch.bool)
    unchanged[12:20] = False
    torch.testing.assert_close(after[unchanged], before[unchanged])
    assert not torch.allclose(after[12:20], before[12:20])


@pytest.mark.parametrize("padding", ["padded", "unpadded"])
def test_flex_model_matches_sdpa_model(padding):
    torch.manual_seed(0)
    ref = FlexBertForMaskedLM(tiny_config(padding=padding))
    flex = copy_model(FlexBertForMaskedLM, ref, tiny_config(padding=padding,
                                                            **{"attention.kernel": "flex"}))
    ids, mask = mixed_batch([19, 4, 12])
    real = mask.bool()
    with torch.set_grad_enabled(_grads_here("flex")):
        out_r, out_f = ref(ids, mask).logits, flex(ids, mask).logits
    torch.testing.assert_close(out_f[real], out_r[real], atol=1e-5, rtol=0)
    if not _grads_here("flex"):
        return
    out_r[real].pow(2).mean().backward()
    out_f[real].pow(2).mean().backward()
    for (name, p_r), p_f in zip(ref.named_parameters(), flex.parameters()):
        torch.testing.assert_close(p_f.grad, p_r.grad, atol=1e-5, rtol=0, msg=name)


def test_flex_training_on_cpu_works_or_fails_naming_the_key():
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(**{"attention.kernel": "flex"}))
    ids, mask = mixed_batch([9, 6])
    if flex_cpu_backward():
        model(ids, mask).logits.sum().backward()
        assert model.model.layers[0].attn.Wqkv.weight.grad.abs().sum() > 0
    else:
        with pytest.raises(RuntimeError, match="model.attention.kernel='flex'.*'sdpa'"):
            model(ids, mask)


def test_unavailable_kernel_fails_clearly():
    if KERNELS.get("flash_attn").available() is None:
        pytest.skip("flash-attn is usable here")
    with pytest.raises(RuntimeError, match="model.attention.kernel='flash_attn' cannot run here"):
        FlexBertForMaskedLM(tiny_config(**{"attention.kernel": "flash_attn"}))


def _gpu_model(kernel: str, dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    ref = FlexBertForMaskedLM(tiny_config(**overrides)).cuda().to(dtype)
    other = copy_model(FlexBertForMaskedLM, ref, tiny_config(**{"attention.kernel": kernel},
                                                             **overrides)).cuda().to(dtype)
    return ref, other


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flex", "flash_attn", "varlen_attn"])
def test_gpu_kernels_match_reference_bf16(kernel):
    reason = KERNELS.get(kernel).available()
    if reason:
        pytest.skip(reason)
    ref, other = _gpu_model(kernel, torch.bfloat16)
    ids, mask = (t.cuda() for t in mixed_batch([130, 64, 257]))
    real = mask.bool()
    with torch.no_grad():
        diff = (ref(ids, mask).logits[real].float() - other(ids, mask).logits[real].float()).abs()
    assert diff.max() < 5e-2


def _layouts_for(lengths: list[int]):
    """The same documents as padded rows (one per row: the dense reference) and packed [T]."""
    ids, mask = mixed_batch(lengths)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    flat = torch.ones(sum(lengths), dtype=torch.long)
    return describe_batch(ids, mask, layout="padded"), describe_batch(flat, cu_seqlens=cu), mask


# Documents shorter and longer than a block, equal lengths (an unmasked length group), singletons.
DOC_LENGTHS = [[1, 5, 70, 33, 130, 64, 64, 2, 97], [64, 64, 64], [300]]


@pytest.mark.parametrize("window", [None, 3, 20, 40, 64, 200])
@pytest.mark.parametrize("lengths", DOC_LENGTHS)
def test_sdpa_unpadded_paths_match_dense_reference(lengths, window):
    """Unpadded sdpa (windowed blocks for local layers, length groups for global ones) computes
    exactly what the dense padded mask does: outputs and q, k, v gradients."""
    padded, unpadded, mask = _layouts_for(lengths)
    ref_out, ref_grads = _attend("sdpa", padded, mask, window)
    out, grads = _attend("sdpa", unpadded, mask, window)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [None, 3])
def test_sdpa_unpadded_on_packed_rows_matches_reference(window):
    """Several documents per row (position ids restart) and pads: all three gradients agree."""
    ref_out, ref_grads = _attend("sdpa", *_packed_layout("padded"), window)
    out, grads = _attend("sdpa", *_packed_layout("unpadded"), window)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sdpa_local_blocks_keep_documents_apart():
    layout = _layouts_for([70, 33, 130])[1]
    q, k, v = (x.detach() for x in _qkv(233))
    before = KERNELS.get("sdpa")(q, k, v, layout, 20, 0.0)
    v2 = v.clone()
    v2[70:103] += 5.0  # the second document
    after = KERNELS.get("sdpa")(q, k, v2, layout, 20, 0.0)
    unchanged = torch.ones(len(v), dtype=torch.bool)
    unchanged[70:103] = False
    torch.testing.assert_close(after[unchanged], before[unchanged])
    assert not torch.allclose(after[70:103], before[70:103])


def _dense_blocks(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    listed = torch.arange(idx.shape[-1]) < num[..., None]
    return torch.zeros(idx.shape, dtype=torch.bool).scatter_(-1, idx.long(), listed)


@pytest.mark.parametrize("window", [None, 3, 64, 200])
@pytest.mark.parametrize("layout_name", ["padded", "unpadded"])
def test_flex_block_mask_equals_create_block_mask(layout_name, window):
    """Blocks classified from document statistics match torch's N x N evaluation exactly."""
    from torch.nn.attention.flex_attention import create_block_mask

    from flexbert.model.attention.kernels import _allowed, _block_mask

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 160, (9,), generator=gen).tolist() + [300, 5]
    ids, mask = mixed_batch(lengths)
    if layout_name == "unpadded":
        layout = describe_batch(ids[mask.bool()], cu_seqlens=torch.tensor([0] + lengths).cumsum(0))
        doc, pos = layout.doc_ids_L[None], layout.position_ids_L[None]
    else:
        layout = describe_batch(ids, mask, layout="padded")
        doc, pos = layout.doc_ids_L, layout.position_ids_L
    ours = _block_mask(layout, window)
    ref = create_block_mask(lambda b, h, q, k: _allowed(pos[b, q], pos[b, k], doc[b, q], doc[b, k], window),
                            doc.shape[0], None, doc.shape[1], doc.shape[1], device="cpu")
    for kind in ("kv", "full_kv"):
        got, want = (_dense_blocks(getattr(m, f"{kind}_num_blocks"), getattr(m, f"{kind}_indices"))
                     for m in (ours, ref))
        assert torch.equal(got, want), kind
    assert ours.shape == ref.shape
    for kind in ("q", "full_q"):  # the backward's lists
        got, want = (_dense_blocks(getattr(m, f"{kind}_num_blocks"), getattr(m, f"{kind}_indices"))
                     for m in (ours, ref))
        assert torch.equal(got, want), kind


# --- choices made once, and float32 refused where the kernel cannot take it ----------------------

@pytest.mark.parametrize("kernel", ["flash_attn", "varlen_attn"])
def test_half_precision_kernels_refuse_fp32_at_recipe_load(kernel):
    """flash-attn raises deep in its extension on float32 inputs, after the model is built and
    the data loaded; the recipe names the key instead."""
    from pathlib import Path

    from flexbert.config import ConfigError
    from flexbert.train.recipe.load import load_recipe

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    args = ["data_dir=x", f"model.attention.kernel={kernel}", "model.padding=unpadded",
            "model.attention.dropout=0.0", "model.attention.local_window=0"]
    with pytest.raises(ConfigError, match=rf"trainer\.precision: model\.attention\.kernel '{kernel}' "
                                          r"computes in bf16/fp16 only and 'fp32'"):
        load_recipe(tiny, [*args, "trainer.precision=fp32"])
    load_recipe(tiny, [*args, "trainer.precision=amp_bf16"])  # the GPU setting loads


@pytest.mark.parametrize("kernel", ["flash_attn", "varlen_attn"])
def test_half_precision_kernels_refuse_fp32_inputs_naming_the_key(kernel):
    layout, mask = _packed_layout("unpadded")
    q, k, v = _qkv(int(mask.sum()))
    with pytest.raises(ValueError, match=rf"model.attention.kernel '{kernel}': got torch.float32 "
                                         "inputs; this kernel needs bf16/fp16 autocast"):
        KERNELS.get(kernel)(q, k, v, layout, None, 0.0)


def test_varlen_window_support_is_resolved_at_registration():
    """Read once from torch's signature when the kernel is registered (no inspect per forward);
    a torch without windowed varlen_attn refuses local layers when the config is checked."""
    from flexbert.config import ConfigError
    from flexbert.model.attention import kernels

    spec = KERNELS.get("varlen_attn")
    assert spec.supports_window is kernels._VARLEN_WINDOW
    if spec.supports_window:
        pytest.skip("this torch's varlen_attn has a sliding window")
    with pytest.raises(ConfigError, match=r"attention\.local_window: kernel 'varlen_attn' has no "
                                          "sliding window"):
        tiny_config(**{"attention.kernel": "varlen_attn", "padding": "unpadded",
                       "attention.dropout": 0.0, "attention.local_window": 8})


def test_compiled_flex_is_chosen_by_the_tensors_device():
    """CPU tensors get eager FlexAttention even on a machine with a GPU; CUDA tensors the
    compiled one (built lazily: nothing compiles until it is called)."""
    from torch.nn.attention.flex_attention import flex_attention

    from flexbert.model.attention.kernels import flex_for_device

    assert flex_for_device("cpu") is flex_attention
    assert flex_for_device("meta") is flex_attention
    assert flex_for_device("cuda") is not flex_attention
