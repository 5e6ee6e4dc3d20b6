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

from flexbert.padding import Layout
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


def sdpa(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """torch's scaled_dot_product_attention; the CPU reference and the CPU fast path.

    Padded layout: one dense [B, 1, S, S] mask (padding, documents, window). Unpadded layout:
    local layers attend in blocks to the neighbouring keys only (O(T x window), see
    `_sdpa_local_blocks`); global layers batch documents of similar length together without
    masks where lengths match (`_sdpa_length_groups`), so no FLOP goes to other documents and
    little to padding.
    """
    if layout.layout == "padded":
        mask = _padded_mask(layout, window)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=dropout_p)
        return out.transpose(1, 2)
    if window is not None and window < layout.max_seqlen - 1:
        return _sdpa_local_blocks(q, k, v, layout, window, dropout_p)
    return _sdpa_length_groups(q, k, v, layout, dropout_p)  # the window spans every document


def _block_size(window: int) -> int:
    # Queries in blocks of `window` see 3 * window keys: ~2/3 of them inside the window, and blocks
    # big enough for SDPA's tiles. Tiny windows (tests) still get blocks of 32.
    return max(window, 32)


def _local_block_mask(layout: Layout, window: int) -> torch.Tensor:
    """[nB, 1, B, B + 2w] boolean: same document and |i - j| <= w, over the flat [T] tokens.

    Documents are contiguous in [T], so flat distance is position distance. Pads (past T and before
    0) form document -1: they see each other and no real token, so no row is empty.
    """

    def build():
        doc = layout.doc_ids_L
        T, B, w = doc.numel(), _block_size(window), window
        nB = -(-T // B)
        doc_q = F.pad(doc, (0, nB * B - T), value=-1).view(nB, B)
        doc_k = F.pad(doc, (w, nB * B - T + w), value=-1).unfold(0, B + 2 * w, B)
        pos = torch.arange(nB * B + 2 * w, device=doc.device) - w
        pos_q = pos[w:w + nB * B].view(nB, B)
        pos_k = pos.unfold(0, B + 2 * w, B)
        near = (pos_q[:, :, None] - pos_k[:, None, :]).abs() <= w
        return ((doc_q[:, :, None] == doc_k[:, None, :]) & near).unsqueeze(1)

    return layout.cached(("local_block_mask", window), build)


def _sdpa_local_blocks(q, k, v, layout: Layout, window: int, dropout_p: float) -> torch.Tensor:
    """Sliding-window attention on [T, H, Dh]: block i of B queries attends to the B + 2w keys
    around it (strided views, no copies of k and v per block), masked to window and document."""
    T, B, w = q.shape[0], _block_size(window), window
    nB = -(-T // B)
    mask = _local_block_mask(layout, window)
    q_B = F.pad(q, (0, 0, 0, 0, 0, nB * B - T)).view(nB, B, *q.shape[1:]).transpose(1, 2)
    k_B, v_B = (F.pad(x, (0, 0, 0, 0, w, nB * B - T + w)).unfold(0, B + 2 * w, B).permute(0, 1, 3, 2)
                for x in (k, v))
    out = F.scaled_dot_product_attention(q_B, k_B, v_B, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(nB * B, *q.shape[1:])[:T]


# Documents whose lengths differ by at most this factor share one SDPA call (padded to the longest).
_GROUP_RATIO = 1.15


def _length_groups(layout: Layout):
    """Documents sorted by length and cut into groups of similar length (host-side, once per
    forward): per group the gather index [n, L] into [T] (pads repeat the document's first token),
    a key-padding mask [n, 1, 1, L] or None when lengths are equal, and where real outputs sit."""

    def build():
        cu = layout.cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups, current = [], []
        for d in order:
            if current and lengths[d] > _GROUP_RATIO * lengths[current[0]]:
                groups.append(current)
                current = []
            current.append(d)
        if current:
            groups.append(current)
        device = layout.cu_seqlens.device
        plans, sources = [], []
        for docs in groups:
            longest = lengths[docs[-1]]
            offs = torch.arange(longest, device=device)
            starts = torch.tensor([cu[d] for d in docs], device=device)
            lens = torch.tensor([lengths[d] for d in docs], device=device)
            valid = offs[None, :] < lens[:, None]
            gather = starts[:, None] + torch.where(valid, offs[None, :], 0)
            mask = None if lengths[docs[0]] == longest else valid[:, None, None, :]
            keep = valid.flatten().nonzero().squeeze(1) if mask is not None else None
            plans.append((gather.flatten(), len(docs), longest, mask, keep))
            sources.append(gather[valid])
        # out_T[t] = cat(group outputs)[inverse[t]]
        inverse = torch.argsort(torch.cat(sources))
        return plans, inverse

    return layout.cached("length_groups", build)


def _sdpa_length_groups(q, k, v, layout: Layout, dropout_p: float) -> torch.Tensor:
    """Attention within documents on [T, H, Dh]: one SDPA call per group of similar lengths."""
    plans, inverse = _length_groups(layout)
    outs = []
    for gather, n, longest, key_mask, keep in plans:
        q_N, k_N, v_N = (x.index_select(0, gather).view(n, longest, *x.shape[1:]).transpose(1, 2)
                         for x in (q, k, v))
        out = F.scaled_dot_product_attention(q_N, k_N, v_N, attn_mask=key_mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(n * longest, *q.shape[1:])
        outs.append(out if keep is None else out.index_select(0, keep))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.index_select(0, inverse)


KERNELS.register("sdpa", "torch SDPA; both layouts; the CPU reference (dense masks when padded; "
                         "windowed blocks and length groups when unpadded)")(
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
    if q.device.type == "cpu" and q.requires_grad and not flex_cpu_backward():
        raise RuntimeError(f"model.attention.kernel='flex': torch {torch.__version__} cannot run "
                           "FlexAttention's backward on CPU; train on CPU with kernel 'sdpa' "
                           "(flex still serves CPU inference and GPU training)")
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


@functools.lru_cache(maxsize=None)
def flex_cpu_backward() -> bool:
    """Whether this torch can backpropagate through FlexAttention on CPU (2.7 can; later releases
    refuse with NotImplementedError). Probed once on a tiny input."""
    from torch.nn.attention.flex_attention import flex_attention

    x = torch.zeros(1, 1, 16, 16, requires_grad=True)
    try:
        with torch.enable_grad():
            flex_attention(x, x, x).sum().backward()
    except NotImplementedError:
        return False
    return True


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
        return ("the flash-attn package is not installed (CUDA only: "
                "pip install flash-attn --no-build-isolation)")
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
