"""The two batch layouts and the metadata attention kernels need for them.

Callers hand the model padded rows (`input_ids` [B, S] + `attention_mask`, optionally several packed
documents per row marked by `position_ids` or `cu_seqlens`) or a packed 1-D `input_ids` [T] with
`cu_seqlens`. `describe_batch` reduces every form to one description: which flattened positions hold
real tokens, and where each document starts. A padding strategy then picks the layout the encoder
runs in: `padded` keeps [B, S, D]; `unpadded` drops pad tokens before the embeddings and runs on
[T, D], so no FLOP is spent on padding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from flexbert.registry import new_registry

PADDINGS = new_registry(
    "padding", "entry: object with `layout` ('padded' | 'unpadded'); the layout the encoder runs in"
)


def compile_options() -> dict[str, Any]:
    """torch.compile options for a model fed by the packed loader (Composer's compile_config).

    Every batch brings new token, document and masked-token counts, so those sizes are symbolic
    from the first compile (dynamic=True). Static shapes gave one graph per new count (36 graphs
    over 12 steps), dynamo's automatic dynamic shapes one more graph each time another size first
    changed (4). Duck sizing must be off as well (`without_duck_shapes`, around the compiled
    calls): it ties sizes that happen to be equal in the first batch (a one-row batch's token
    count and the row length), and the next batch then recompiles. With both, one graph serves
    every batch. Nothing here changes process-wide state.
    """
    return {"dynamic": True}


def without_duck_shapes(fn: Callable) -> Callable:
    """`fn` (a compiled callable) run with torch's duck sizing off for its own calls only.

    Duck sizing is a torch.fx config read when dynamo starts tracing (its ShapeEnv), so the
    setting must be in force around each call that may trace; `patch` restores it after."""
    import torch.fx.experimental._config as fx_config

    if not hasattr(fx_config, "use_duck_shape"):
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with fx_config.patch(use_duck_shape=False):
            return fn(*args, **kwargs)

    return run


def scope_compiled_forward(module: Any) -> None:
    """After Composer compiled `module` (it replaces `module.forward` with dynamo's wrapper), run
    that forward without duck sizing (`without_duck_shapes`)."""
    module.forward = without_duck_shapes(module.forward)


@dataclass
class Layout:
    """One forward pass's token layout; built once, read by every layer.

    Tensors named `_T` cover the real tokens in row-major order; `_L` tensors are in the layout
    the encoder runs in ([B, S] for padded, [T] for unpadded).
    """

    layout: str
    rows: int
    row_len: int
    flat_input: bool
    indices_T: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    position_ids_L: torch.Tensor
    doc_ids_L: torch.Tensor
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.indices_T.numel())

    @property
    def num_docs(self) -> int:
        return int(self.cu_seqlens.numel() - 1)

    def to_layout(self, x_BS: torch.Tensor) -> torch.Tensor:
        """Rows-shaped [B, S, ...] (or [T, ...] for packed input) -> this layout."""
        if self.flat_input:
            x_BS = x_BS.unsqueeze(0)
        if self.layout == "padded":
            return x_BS
        return x_BS.flatten(0, 1)[self.indices_T]

    def to_rows(self, x_L: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """This layout -> the caller's shape: [B, S, ...] or, for packed input, [T, ...]."""
        if self.layout == "unpadded":
            x_L = self._scatter(x_L, fill)
        return x_L.squeeze(0) if self.flat_input else x_L

    def from_tokens(self, x_T: torch.Tensor) -> torch.Tensor:
        """Real tokens [T, ...] -> this layout (pads zero-filled in the padded layout)."""
        return x_T if self.layout == "unpadded" else self._scatter(x_T, 0.0)

    def _scatter(self, x_T: torch.Tensor, fill: float) -> torch.Tensor:
        out = x_T.new_full((self.rows * self.row_len, *x_T.shape[1:]), fill)
        return out.index_copy(0, self.indices_T, x_T).unflatten(0, (self.rows, self.row_len))

    def to_tokens(self, x_L: torch.Tensor) -> torch.Tensor:
        """This layout -> real tokens only, [T, ...] in row-major order."""
        if self.layout == "unpadded":
            return x_L
        return x_L.flatten(0, 1)[self.indices_T]

    def rows_of_tokens(self, token_positions: torch.Tensor) -> torch.Tensor:
        """Positions among the real tokens [T] -> rows of this layout's flattened [N, ...] tensors."""
        return token_positions if self.layout == "unpadded" else self.indices_T[token_positions]

    def cached(self, key: Any, build: Any) -> Any:
        """Per-forward cache for masks and block masks shared by all layers of one kind."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


def describe_batch(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    max_seqlen: Optional[int] = None,
    layout: str = "unpadded",
    indices: Optional[torch.Tensor] = None,
) -> Layout:
    """Reduce any accepted input form to a `Layout` in the requested layout.

    Given `cu_seqlens`, `max_seqlen` and `indices` (as the training collator provides them), no
    step here waits on the device: every shape is known on the host. Without them they are
    derived from the mask or positions, which costs a device sync on GPU.
    """
    flat_input = input_ids.dim() == 1
    if flat_input:
        if cu_seqlens is None:
            raise ValueError("packed 1-D input_ids need cu_seqlens (document offsets)")
        input_ids = input_ids.unsqueeze(0)
        attention_mask = None
        position_ids = position_ids.unsqueeze(0) if position_ids is not None else None
    rows, row_len = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        indices_T = torch.arange(rows * row_len, device=device)
    elif indices is not None:
        indices_T = indices.to(device=device, dtype=torch.long)
    else:
        indices_T = attention_mask.flatten().nonzero().squeeze(1)
    num_tokens = indices_T.numel()
    if cu_seqlens is None:
        cu_seqlens = _doc_offsets(attention_mask, position_ids, indices_T, rows, row_len)
    cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
    _check_offsets(cu_seqlens, num_tokens)
    if max_seqlen is None:
        max_seqlen = int(cu_seqlens.diff().max()) if cu_seqlens.numel() > 1 else 0
    doc_ids_T = _doc_ids(cu_seqlens, num_tokens)
    if position_ids is None:
        position_ids_T = (torch.arange(num_tokens, device=device)
                          - cu_seqlens[:-1].long().index_select(0, doc_ids_T))
    else:
        position_ids_T = position_ids.flatten().index_select(0, indices_T)
    # max_seqlen stays as given: int() on it would pin a compiled graph to one value.
    out = Layout(layout, rows, row_len, flat_input, indices_T, cu_seqlens, max_seqlen,
                 position_ids_T, doc_ids_T)
    if layout == "padded":
        out.position_ids_L = out._scatter(position_ids_T, 0)
        out.doc_ids_L = out._scatter(doc_ids_T, -1)
    return out


def _doc_ids(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Document index of every token: a running count of the document starts at or before it.
    (One small scatter and a cumsum; repeat_interleave costs several times more on CPU.)"""
    starts = torch.zeros(num_tokens, dtype=torch.int32, device=cu_seqlens.device)
    starts.index_add_(0, cu_seqlens[1:-1].long().clamp(max=num_tokens - 1),
                      (cu_seqlens[1:-1] < num_tokens).int())
    return starts.cumsum(0)


def _check_offsets(cu_seqlens: torch.Tensor, num_tokens: int) -> None:
    """cu_seqlens must end at the real-token count. On an accelerator the check is queued on the
    device (it fails at a later launch) rather than stalling the host every step; under
    torch.compile too, where reading the value would break the graph."""
    if cu_seqlens.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(cu_seqlens[-1] == num_tokens)
    elif int(cu_seqlens[-1]) != num_tokens:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the batch has "
                         f"{num_tokens} real tokens")


def _doc_offsets(attention_mask, position_ids, indices_T, rows, row_len) -> torch.Tensor:
    """Document starts: where position ids restart at 0, else one document per row."""
    device = indices_T.device
    if position_ids is not None:
        starts = (position_ids.flatten()[indices_T] == 0).nonzero().squeeze(1)
        if starts.numel() == 0 or int(starts[0]) != 0:
            starts = torch.cat([starts.new_zeros(1), starts[starts != 0]])
    else:
        per_row = (attention_mask.sum(1) if attention_mask is not None
                   else torch.full((rows,), row_len, device=device))
        starts = torch.cumsum(per_row, 0) - per_row
        starts = starts[per_row > 0]
    end = torch.tensor([indices_T.numel()], device=device)
    return torch.cat([starts.to(end.dtype), end]).to(torch.int32)


@dataclass(frozen=True)
class PaddingStrategy:
    layout: str


PADDINGS.register("padded", "encoder runs on [B, S, D]; kernels mask padding, documents, window")(
    PaddingStrategy("padded")
)
PADDINGS.register("unpadded", "pads removed before the embeddings; encoder runs on [T, D]")(
    PaddingStrategy("unpadded")
)
