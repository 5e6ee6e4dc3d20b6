"""Attention kernels: one signature, several implementations.

Every kernel is called as `kernel(q, k, v, layout, window, dropout_p)` with q, k, v already
rotated, shaped [B, S, H, Dh] (padded layout) or [T, H, Dh] (unpadded layout), and returns the
same shape. `window` is the half-width of the sliding window (tokens to each side) or None for
global attention. Documents never attend across each other, whatever the layout.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from flexbert.padding import Layout, doc_rows
from flexbert.registry import new_registry

KERNELS = new_registry(
    "attention kernel",
    "KernelSpec(fn(q, k, v, layout, window, dropout_p) -> out, layouts, supports_dropout, "
    "available() -> str | None reason it cannot run)",
)


@dataclass(frozen=True)
class KernelSpec:
    fn: Callable[..., torch.Tensor]
    layouts: frozenset
    supports_dropout: bool = True
    # Returns None when usable here, else why not (checked when the model is built).
    available: Callable[[], Optional[str]] = lambda: None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)


def kernels_for(layout: str) -> list[str]:
    return [name for name in KERNELS.names() if layout in KERNELS.get(name).layouts]


def _allowed(q_pos, k_pos, q_doc, k_doc, window: Optional[int]) -> torch.Tensor:
    same = q_doc == k_doc
    if window is None:
        return same
    return same & ((q_pos - k_pos).abs() <= window)


def _padded_mask(layout: Layout, window: Optional[int]) -> torch.Tensor:
    """[B, 1, S, S] boolean: same document (pads form their own, so no row is empty) and window."""

    def build():
        doc = layout.doc_ids_L
        pos = torch.arange(layout.row_len, device=doc.device)
        allowed = _allowed(pos[:, None], pos[None, :], doc[:, :, None], doc[:, None, :], window)
        return allowed.unsqueeze(1)

    return layout.cached(("dense_mask", window), build)


def _doc_row_mask(layout: Layout, window: Optional[int]) -> torch.Tensor:
    """[N, 1, L, L] for documents laid one per row; the diagonal keeps pad queries finite."""

    def build():
        _, valid = doc_rows(layout)
        pos = torch.arange(layout.max_seqlen, device=valid.device)
        allowed = valid[:, None, :] & _allowed(pos[:, None], pos[None, :], 0, 0, window)
        return (allowed | torch.eye(layout.max_seqlen, dtype=torch.bool, device=valid.device)).unsqueeze(1)

    return layout.cached(("doc_row_mask", window), build)


def _to_doc_rows(x_T: torch.Tensor, layout: Layout) -> torch.Tensor:
    flat, _ = doc_rows(layout)
    rows = x_T.new_zeros(layout.num_docs * layout.max_seqlen, *x_T.shape[1:])
    return rows.index_copy(0, flat, x_T).unflatten(0, (layout.num_docs, layout.max_seqlen))


def sdpa(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """torch's scaled_dot_product_attention with a dense boolean mask (the reference kernel)."""
    if layout.layout == "padded":
        mask = _padded_mask(layout, window)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=dropout_p)
        return out.transpose(1, 2)
    q_N, k_N, v_N = (_to_doc_rows(x, layout).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q_N, k_N, v_N, attn_mask=_doc_row_mask(layout, window),
                                         dropout_p=dropout_p)
    flat, _ = doc_rows(layout)
    return out.transpose(1, 2).flatten(0, 1)[flat]


KERNELS.register("sdpa", "torch SDPA with dense masks; both layouts; the CPU reference")(
    KernelSpec(sdpa, frozenset({"padded", "unpadded"}))
)


def _block_mask(layout: Layout, window: Optional[int]):
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        doc = layout.doc_ids_L
        pos = layout.position_ids_L
        if layout.layout == "unpadded":
            doc, pos = doc[None], pos[None]
        batch = doc.shape[0]

        def mask_mod(b, h, q_idx, kv_idx):
            return _allowed(pos[b, q_idx], pos[b, kv_idx], doc[b, q_idx], doc[b, kv_idx], window)

        # Pads share document -1, so in the padded layout they attend only to each other.
        return create_block_mask(mask_mod, batch, None, doc.shape[1], doc.shape[1],
                                 device=doc.device)

    return layout.cached(("block_mask", window), build)


def flex(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """FlexAttention: document + sliding-window block mask; skips blocks no query can see."""
    block_mask = _block_mask(layout, window)
    if layout.layout == "unpadded":
        q, k, v = (x.unsqueeze(0) for x in (q, k, v))
    out = _flex_fn()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                     block_mask=block_mask).transpose(1, 2)
    return out.squeeze(0) if layout.layout == "unpadded" else out


@functools.lru_cache(maxsize=None)
def _flex_fn():
    """Compiled flex_attention on CUDA (the fast path); the eager reference elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if not torch.cuda.is_available():
        return flex_attention
    return torch.compile(flex_attention, dynamic=False)


def _flex_available() -> Optional[str]:
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    return None


KERNELS.register("flex", "FlexAttention with a document/sliding-window block mask; both layouts")(
    KernelSpec(flex, frozenset({"padded", "unpadded"}), supports_dropout=False,
               available=_flex_available)
)


def flash_attn(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """flash-attn 2 varlen kernel over packed documents, native sliding window."""
    from flash_attn import flash_attn_varlen_func

    w = (-1, -1) if window is None else (window, window)
    return flash_attn_varlen_func(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen,
                                  layout.max_seqlen, dropout_p=dropout_p, window_size=w)


def _flash_available() -> Optional[str]:
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'flexbert[gpu]', CUDA only)"
    if not torch.cuda.is_available():
        return "flash-attn needs a CUDA device"
    return None


KERNELS.register("flash_attn", "flash-attn varlen (GPU, optional package); unpadded only")(
    KernelSpec(flash_attn, frozenset({"unpadded"}), available=_flash_available)
)


def varlen_attn(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """torch's own varlen attention (torch >= 2.10); sliding window where torch has `window_size`."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn as torch_varlen

    cu, longest = layout.cu_seqlens, layout.max_seqlen
    if window is None:
        return torch_varlen(q, k, v, cu, cu, longest, longest)
    if "window_size" not in inspect.signature(torch_varlen).parameters:
        raise ValueError(f"torch {torch.__version__}'s varlen_attn has no sliding window; set "
                         "model.attention.local_window: 0 or use the flex or flash_attn kernel")
    return torch_varlen(q, k, v, cu, cu, longest, longest, window_size=(window, window))


def _varlen_available() -> Optional[str]:
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs torch >= 2.10)"
    if not torch.cuda.is_available():
        return "torch varlen_attn needs a CUDA device"
    return None


KERNELS.register("varlen_attn", "torch.nn.attention.varlen (torch >= 2.10, GPU); unpadded only")(
    KernelSpec(varlen_attn, frozenset({"unpadded"}), supports_dropout=False,
               available=_varlen_available)
)
