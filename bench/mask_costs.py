"""The GPU path's per-batch setup, timed where it can be (CPU): `describe_batch` and FlexAttention
block masks for base-sized batches, as a fraction of a ModernBERT-base training step's time at
H100 bf16 peak (step FLOPs / peak), so a reader can see whether mask building could bound speed.

Run by bench/train_step.py (its "Per-batch setup" table); alone: python bench/mask_costs.py
"""

from __future__ import annotations

import statistics
import time

import torch

import common as C

from flexbert.runtime.perf import peak_flops, step_flops

H100_BF16_PEAK = peak_flops("H100 SXM")  # dense bf16 FLOP/s (flexbert.runtime.perf)


def _packed(rows: int, row_len: int, lengths: list[int]) -> dict:
    """Documents packed left-aligned into full rows (the collator's form; a document that does
    not fit is cut, the rest dropped), with the collator's `indices`."""
    ids = torch.zeros(rows, row_len, dtype=torch.long)
    mask, pos = torch.zeros_like(ids), torch.zeros_like(ids)
    placed, free = [], [row_len] * rows
    for n in lengths:
        row = next((r for r in range(rows) if free[r] > 0), None)
        if row is None:
            break
        n, col = min(n, free[row]), row_len - free[row]
        mask[row, col:col + n], pos[row, col:col + n] = 1, torch.arange(n)
        free[row] -= n
        placed.append(n)
    cu = torch.tensor([0] + placed).cumsum(0).int()
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "cu_seqlens": cu,
            "max_seqlen": max(placed), "indices": mask.flatten().nonzero().squeeze(1)}


def _batches() -> dict[str, dict]:
    gen = torch.Generator().manual_seed(0)
    short = C.LengthCase("v", 256, 64, 16, 512).sample(64, gen)  # > 8 x 1024 tokens
    long = C.LengthCase("v", 4096, 1024, 16, 8192).sample(4, gen)
    return {"8 x 1024 packed": _packed(8, 1024, short), "1 x 8192": _packed(1, 8192, long)}


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 2)


def mask_costs(reps: int = 5) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask

    from flexbert.model.attention.kernels import _allowed, _block_mask
    from flexbert.model.attention.layout import describe_batch

    cfg = C.model_cfg(C.base_tree())
    window = cfg.attention.local_window // 2
    out = []
    for name, b in _batches().items():
        describe = lambda: describe_batch(b["input_ids"], b["attention_mask"], b["position_ids"],  # noqa: E731
                                          b["cu_seqlens"], b["max_seqlen"], "unpadded", b["indices"])
        layout = describe()
        doc, pos = layout.doc_ids_L[None], layout.position_ids_L[None]
        n = doc.shape[1]

        def torch_masks():
            for w in (window, None):
                create_block_mask(lambda b_, h, q, k, w=w: _allowed(pos[b_, q], pos[b_, k], doc[b_, q],
                                                                    doc[b_, k], w),
                                  1, None, n, n, device="cpu")

        def our_masks():
            layout.cache.clear()
            for w in (window, None):
                _block_mask(layout, w)

        lengths = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
        step_s = step_flops(cfg, lengths, round(0.3 * n)) / H100_BF16_PEAK
        row = {"batch": name, "tokens": n, "documents": len(lengths),
               "base_step_ms_at_h100_peak": round(1e3 * step_s, 2),
               "describe_batch_ms": _median_ms(describe, reps),
               "create_block_mask_ms": _median_ms(torch_masks, max(1, reps // 2)),
               "flexbert_block_mask_ms": _median_ms(our_masks, reps)}
        for key in ("describe_batch_ms", "create_block_mask_ms", "flexbert_block_mask_ms"):
            row[key.replace("_ms", "_fraction")] = round(row[key] / row["base_step_ms_at_h100_peak"], 4)
        out.append(row)
    return out


def mask_costs_markdown(rows: list[dict]) -> str:
    table = C.table(
        ["batch", "tokens / docs", "base step at H100 peak ms", "describe_batch ms (fraction)",
         "torch create_block_mask x2 ms (fraction)", "FlexBERT block masks x2 ms (fraction)"],
        [[r["batch"], f"{r['tokens']:,} / {r['documents']}", r["base_step_ms_at_h100_peak"],
          f"{r['describe_batch_ms']} ({r['describe_batch_fraction']:.1%})",
          f"{r['create_block_mask_ms']} ({r['create_block_mask_fraction']:.1%})",
          f"{r['flexbert_block_mask_ms']} ({r['flexbert_block_mask_fraction']:.1%})"] for r in rows])
    return "\n".join([
        "### Per-batch setup of the GPU path (timed on this CPU)", "",
        "ModernBERT-base's step FLOPs (`step_flops`, 30% masked) at H100 bf16 dense peak "
        f"({H100_BF16_PEAK / 1e12:.0f} TFLOP/s) give the shortest possible step; each setup cost is "
        "shown in CPU milliseconds and as a fraction of that step. Block masks: one local "
        "(window 64 each side) and one global per batch, as a forward builds them; torch's "
        "`create_block_mask` (eager) evaluates all N x N pairs, FlexBERT's `_block_mask` "
        "classifies 128 x 128 blocks from document statistics (same BlockMask). "
        "Medians of a few calls; the CPU is shared, so read them as upper bounds.", "",
        table])


if __name__ == "__main__":
    print(mask_costs_markdown(mask_costs()))
