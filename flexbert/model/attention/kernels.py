"""Attention kernels: one signature, several implementations.

Every kernel is called as `kernel(q, k, v, layout, window, dropout_p)` with q, k, v already
rotated, shaped [B, S, H, Dh] (padded layout) or [T, H, Dh] (unpadded layout), and returns the
same shape. `window` is the half-width of the sliding window (tokens to each side) or None for
global attention. Documents never attend across each other, whatever the layout.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from flexbert.model.attention.layout import Layout
from flexbert.model.compile import compile_options, without_duck_shapes
from flexbert.registry import KERNELS


@dataclass(frozen=True)
class KernelSpec:
    fn: Callable[..., torch.Tensor]
    layouts: frozenset
    supports_dropout: bool = True
    # Returns None when usable here, else why not (checked when the model is built).
    available: Callable[[], Optional[str]] = lambda: None
    # Sliding-window (local) layers: known when the kernel is registered, checked with the config.
    supports_window: bool = True
    # Only bf16/fp16 inputs (flash-attn's kernels): the trainer needs amp_bf16 / amp_fp16.
    half_precision_only: bool = False

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)


HALF_PRECISIONS = ("amp_bf16", "amp_fp16")


def precision_problem(kernel: str, precision: str) -> Optional[str]:
    """Why `kernel` cannot run under Composer `precision`, or None (checked at recipe load)."""
    if KERNELS.get(kernel).half_precision_only and precision not in HALF_PRECISIONS:
        return (f"model.attention.kernel {kernel!r} computes in bf16/fp16 only and "
                f"{precision!r} feeds it float32; set {' or '.join(HALF_PRECISIONS)} "
                "(or the kernel sdpa / flex)")
    return None


def _require_half(q: torch.Tensor, kernel: str) -> None:
    # flash-attn would fail deep inside its extension ("only support fp16 and bf16").
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"model.attention.kernel {kernel!r}: got {q.dtype} inputs; this kernel "
                         "needs bf16/fp16 autocast (precision amp_bf16) or another kernel (sdpa, flex)")


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
    """Documents sorted by length and bucketed on a log scale (lengths in a bucket differ by less
    than _GROUP_RATIO), built once per forward with vectorised ops: per group the gather index
    [n * L] into [T] (pads repeat the document's first token), n, L and a key-padding mask
    [n, 1, 1, L] or None when lengths are equal; and `slot_of_token`, where each real token's
    output sits in the groups' concatenated outputs. Group sizes are read on the host once."""

    def build():
        cu = layout.cu_seqlens.long()
        lengths = cu.diff()
        order = torch.argsort(lengths, stable=True)
        sorted_len = lengths.index_select(0, order)
        bucket = (sorted_len.clamp(min=1).double().log() / math.log(_GROUP_RATIO)).floor()
        _, counts = torch.unique_consecutive(bucket, return_counts=True)
        longest = sorted_len.index_select(0, counts.cumsum(0) - 1)
        shortest = sorted_len.index_select(0, counts.cumsum(0) - counts)
        sizes = torch.stack([counts, longest, shortest]).tolist()  # the one host read
        width = torch.repeat_interleave(longest, counts)  # each document's slot count
        slots = int(sum(n * w for n, w in zip(sizes[0], sizes[1])))
        doc = torch.repeat_interleave(torch.arange(width.numel(), device=cu.device), width,
                                      output_size=slots)
        within = torch.arange(slots, device=cu.device) - (width.cumsum(0) - width).index_select(0, doc)
        valid = within < sorted_len.index_select(0, doc)
        gather = cu.index_select(0, order).index_select(0, doc) + torch.where(valid, within, 0)
        plans = []
        for g, v, n, L, short in zip(gather.split([n * L for n, L in zip(*sizes[:2])]),
                                     valid.split([n * L for n, L in zip(*sizes[:2])]), *sizes):
            plans.append((g, n, L, None if short == L else v.view(n, 1, 1, L)))
        slot_of_token = torch.empty_like(gather).index_put_((gather[valid],), valid.nonzero().squeeze(1))
        return plans, slot_of_token[:layout.indices_T.numel()]

    return layout.cached("length_groups", build)


def _sdpa_length_groups(q, k, v, layout: Layout, dropout_p: float) -> torch.Tensor:
    """Attention within documents on [T, H, Dh]: one SDPA call per group of similar lengths."""
    plans, slot_of_token = _length_groups(layout)
    outs = []
    for gather, n, longest, key_mask in plans:
        q_N, k_N, v_N = (x.index_select(0, gather).view(n, longest, *x.shape[1:]).transpose(1, 2)
                         for x in (q, k, v))
        out = F.scaled_dot_product_attention(q_N, k_N, v_N, attn_mask=key_mask, dropout_p=dropout_p)
        outs.append(out.transpose(1, 2).reshape(n * longest, *q.shape[1:]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.index_select(0, slot_of_token)


KERNELS.register("sdpa", "torch SDPA; both layouts; the CPU reference (dense masks when padded; "
                         "windowed blocks and length groups when unpadded)")(
    KernelSpec(sdpa, frozenset({"padded", "unpadded"}))
)


# FlexAttention's tile: block masks describe [128 x 128] blocks of (query, key) pairs.
_FLEX_BLOCK = 128
_PAD_DOC = 2**30  # pads sort after every document, so document ids never decrease along a row


def _block_mask(layout: Layout, window: Optional[int]):
    """FlexAttention BlockMask for documents (+ window), built from per-block statistics.

    `create_block_mask` evaluates the mask on all N x N pairs (O(N^2) per batch, and under
    torch.compile its signature inspection breaks the graph). Here each [128 x 128] block is
    classified from the first and last document id of its query and key tiles and the blocks'
    distance: O((N / 128)^2), a handful of vectorised ops. Blocks that may mix allowed and
    refused pairs are "partial" (flex applies `mask_mod` there); blocks are "full" only when
    every pair is allowed, so the result equals the dense mask's.
    """
    from torch.nn.attention.flex_attention import BlockMask

    def build():
        doc, pos = layout.doc_ids_L, layout.position_ids_L
        if layout.layout == "unpadded":
            doc, pos = doc[None], pos[None]

        def mask_mod(b, h, q_idx, kv_idx):
            return _allowed(pos[b, q_idx], pos[b, kv_idx], doc[b, q_idx], doc[b, kv_idx], window)

        partial, full = _block_kinds(doc, window)
        # Pads share document -1 (position 0), so in the padded layout they attend only to each other.
        kv, q = (*_ordered(partial), *_ordered(full)), ()
        try:  # the query-side lists are the transposed flags (from_kv_blocks rebuilds them slowly)
            q = (*_ordered(partial.transpose(-1, -2)), *_ordered(full.transpose(-1, -2)))
            return BlockMask(seq_lengths=(doc.shape[1], doc.shape[1]), kv_num_blocks=kv[0],
                             kv_indices=kv[1], full_kv_num_blocks=kv[2], full_kv_indices=kv[3],
                             q_num_blocks=q[0], q_indices=q[1], full_q_num_blocks=q[2],
                             full_q_indices=q[3], BLOCK_SIZE=(_FLEX_BLOCK, _FLEX_BLOCK),
                             mask_mod=mask_mod)
        except TypeError:  # a torch whose BlockMask constructor differs
            return BlockMask.from_kv_blocks(*kv, BLOCK_SIZE=_FLEX_BLOCK, mask_mod=mask_mod,
                                            seq_lengths=(doc.shape[1], doc.shape[1]))

    return layout.cached(("block_mask", window), build)


def _block_kinds(doc: torch.Tensor, window: Optional[int]):
    """[R, 1, nb, nb] partial and full blocks of `doc` [R, N] (documents contiguous per row,
    pads -1 at row ends)."""
    rows, n = doc.shape
    nb = -(-n // _FLEX_BLOCK)
    key = torch.where(doc < 0, _PAD_DOC, doc)
    # Each tile's first and last token (the last tile may be short): document ids never
    # decrease along a row, so these are the tile's smallest and largest.
    first = torch.arange(nb, device=doc.device) * _FLEX_BLOCK
    lo = key.index_select(1, first)
    hi = key.index_select(1, (first + _FLEX_BLOCK - 1).clamp(max=n - 1))
    lo_q, hi_q, lo_k, hi_k = lo[:, :, None], hi[:, :, None], lo[:, None, :], hi[:, None, :]
    share_doc = (lo_q <= hi_k) & (lo_k <= hi_q)
    one_doc = (lo_q == hi_q) & (hi_q == lo_k) & (lo_k == hi_k)
    blocks = torch.arange(nb, device=doc.device)
    complete = (blocks + 1) * _FLEX_BLOCK <= n
    complete = complete[:, None] & complete[None, :]
    if window is None:
        near_any = near_all = torch.ones(nb, nb, dtype=torch.bool, device=doc.device)
    else:
        apart = (blocks[:, None] - blocks[None, :]).abs() * _FLEX_BLOCK
        near_any = apart - (_FLEX_BLOCK - 1) <= window
        near_all = apart + (_FLEX_BLOCK - 1) <= window
        # pads have position 0 everywhere: the window never separates two pads
        pads = (hi_q == _PAD_DOC) & (hi_k == _PAD_DOC)
        near_any = near_any | pads
        near_all = near_all | (pads & one_doc)
    full = one_doc & complete & near_all
    partial = share_doc & near_any & ~full
    return partial.unsqueeze(1), full.unsqueeze(1)


def _ordered(blocks: torch.Tensor):
    """Block flags [R, 1, nq, nk] -> (count per query block, key-block indices listed first)."""
    # A stable partition by prefix sums: listed blocks first, in order (argsort's result; a sort
    # per row cost 20x more on CPU).
    flags = blocks.to(torch.int32)
    listed = flags.cumsum(-1, dtype=torch.int32)
    count = listed[..., -1:]
    rest = count + (1 - flags).cumsum(-1, dtype=torch.int32)
    dest = torch.where(blocks, listed, rest) - 1
    cols = torch.arange(flags.shape[-1], dtype=torch.int32, device=flags.device).expand_as(flags)
    order = torch.empty_like(flags).scatter_(-1, dest.long(), cols)
    return count.squeeze(-1), order


def flex(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """FlexAttention: document + sliding-window block mask; skips blocks no query can see."""
    compiling = torch.compiler.is_compiling()  # the probe below would break the graph
    if not compiling and q.device.type == "cpu" and q.requires_grad and not flex_cpu_backward():
        raise RuntimeError(f"model.attention.kernel='flex': torch {torch.__version__} cannot run "
                           "FlexAttention's backward on CPU; train on CPU with kernel 'sdpa' "
                           "(flex still serves CPU inference and GPU training)")
    block_mask = _block_mask(layout, window)
    if layout.layout == "unpadded":
        q, k, v = (x.unsqueeze(0) for x in (q, k, v))
    # inside a compiled model: traced as is; else compiled where the tensors are on CUDA
    attend = _eager_flex() if compiling else flex_for_device(q.device.type)
    out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                 block_mask=block_mask).transpose(1, 2)
    return out.squeeze(0) if layout.layout == "unpadded" else out


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


@functools.lru_cache(maxsize=None)
def flex_for_device(device_type: str):
    """Compiled flex_attention for CUDA tensors (the fast path); the eager reference for any
    other device, even on a machine that has a GPU (a CPU model there must not compile)."""
    if device_type != "cuda":
        return _eager_flex()
    return compiled_flex()


def compiled_flex(backend: str = "inductor"):
    """flex_attention compiled once for every batch: token counts and block counts are symbolic
    (`compile_options`), so fresh batches reuse one graph per window kind and never reach
    dynamo's recompile limit (with static shapes each new token count was a new graph)."""
    return without_duck_shapes(torch.compile(_eager_flex(), backend=backend, **compile_options()))


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
    _require_half(q, "flash_attn")
    from flash_attn import flash_attn_varlen_func

    # flash-attn's window_size=(left, right): keys i - left .. i + right, our half-width each side
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
    KernelSpec(flash_attn, frozenset({"unpadded"}), available=_flash_available,
               half_precision_only=True)
)


def _torch_varlen() -> tuple[Optional[Callable], bool]:
    """torch's varlen_attn and whether it takes `window_size`, resolved once at registration
    (None, False where this torch has none)."""
    try:
        from torch.nn.attention.varlen import varlen_attn as torch_varlen
    except ImportError:
        return None, False
    import inspect

    return torch_varlen, "window_size" in inspect.signature(torch_varlen).parameters


_TORCH_VARLEN, _VARLEN_WINDOW = _torch_varlen()


def varlen_attn(q, k, v, layout: Layout, window: Optional[int], dropout_p: float) -> torch.Tensor:
    """torch's own varlen attention (torch >= 2.10); sliding window where torch has `window_size`
    (the config check refuses local layers otherwise)."""
    _require_half(q, "varlen_attn")
    cu, longest = layout.cu_seqlens, layout.max_seqlen
    if window is None:
        return _TORCH_VARLEN(q, k, v, cu, cu, longest, longest)
    return _TORCH_VARLEN(q, k, v, cu, cu, longest, longest, window_size=(window, window))


def _varlen_available() -> Optional[str]:
    if _TORCH_VARLEN is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs torch >= 2.10)"
    if not torch.cuda.is_available():
        return "torch varlen_attn needs a CUDA device"
    return None


KERNELS.register("varlen_attn", "torch.nn.attention.varlen (torch >= 2.10, GPU); unpadded only")(
    KernelSpec(varlen_attn, frozenset({"unpadded"}), supports_dropout=False,
               available=_varlen_available, supports_window=_VARLEN_WINDOW,
               half_precision_only=True)
)
