"""Inference throughput, the ModernBERT paper's protocol: four document sets (fixed 512, variable
normal(256, 64) in [16, 512], fixed 8192, variable normal(4096, 1024) in [16, 8192]), thousands of
real tokens/s through the encoder, FlexBERT (padded, unpadded) vs transformers' ModernBERT.

CPU: the small config, fewer documents per set (full lengths unless --long-scale divides the
8192 sets' lengths), a fixed batch of documents. CUDA: ModernBERT-base in bf16, full lengths, and
the largest batch (doubling until out of memory) that fits for each implementation, as the paper
did.

Usage: python bench/inference.py [--quick] [--set-tokens 32768] [--reps 3] [--long-scale 1]
Writes bench/results/inference.{json,md,png} (inference_gpu.* on CUDA) and docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import zlib

import torch

import common as C

IMPLS = ("transformers", "flexbert padded", "flexbert unpadded")


def build(device: torch.device, dtype: torch.dtype, tree: dict, kernel: str) -> dict:
    flex_u, hf = C.flex_and_hf(tree, padding="unpadded", **{"attention.kernel": kernel})
    flex_p, _ = C.flex_and_hf(tree, padding="padded",
                              **{"attention.kernel": kernel if kernel in ("sdpa", "flex") else "sdpa"})
    flex_p.load_state_dict(flex_u.state_dict())
    if device.type == "cuda" and C.flash_attn_installed():
        hf.config._attn_implementation = "flash_attention_2"  # transformers' default when installed
    models = {"transformers": hf, "flexbert padded": flex_p, "flexbert unpadded": flex_u}
    encoders = {}
    for name, model in models.items():
        model.to(device=device, dtype=dtype).eval()
        if name == "transformers":
            encoders[name] = lambda b, m=model.model: m(**b).last_hidden_state
        else:
            encoders[name] = lambda b, m=model.model: m(**b)[0]
    return encoders


def batches_of(lengths: list[int], batch: int, tree: dict, gen, device) -> list[dict]:
    out = []
    for i in range(0, len(lengths), batch):
        b = C.padded_batch(lengths[i:i + batch], tree["vocab_size"], tree["pad_token_id"], gen)
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def largest_batch(encode, lengths, tree, gen, device, start: int = 8) -> int:
    """Doubling search for the largest batch of the set's longest documents that fits (CUDA)."""
    size, best = start, 0
    while size <= len(lengths):
        try:
            b = batches_of(sorted(lengths)[-size:], size, tree, gen, device)[0]
            with torch.inference_mode():
                encode(b)
            torch.cuda.synchronize()
            best = size
            size *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return max(best, 1)


def run_set(case: C.LengthCase, encoders: dict, args, device, tree: dict) -> dict:
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    mean_len = case.mean / case.scale
    n_docs = args.docs or max(2, round(args.set_tokens / mean_len))
    lengths = case.sample(n_docs, gen)
    if device.type == "cuda":
        sizes = {n: largest_batch(e, lengths, tree, gen, device) for n, e in encoders.items()}
    else:
        per = max(1, round(args.batch_tokens / mean_len))
        sizes = {n: per for n in encoders}
    sets = {n: batches_of(lengths, sizes[n], tree, gen, device) for n in encoders}

    def runner(name):
        def run(_):
            with torch.inference_mode():
                for b in sets[name]:
                    encoders[name](b)
        return run

    def one_batch(name):
        with torch.inference_mode():
            encoders[name](sets[name][0])

    for name in encoders:  # warm-up on one batch each
        one_batch(name)
    times = C.alternate({n: runner(n) for n in encoders}, args.reps, 0, device)
    total = sum(lengths)
    result = {"set": case.name, "lengths": case.describe(), "documents": n_docs,
              "real_tokens": total, "impls": {}}
    result["impls"] = C.summarize_impls(
        times, [total] * args.reps, lambda name: C.peak_memory(lambda: one_batch(name), device))
    for name, stats in result["impls"].items():
        stats["batch_docs"] = sizes[name]
    return result


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["sets"]:
        for name in IMPLS:
            s = r["impls"][name]
            rows.append([r["set"], name, f"{s['tokens_per_s'] / 1000:,.1f}",
                         f"{s['min'] / 1000:,.1f}-{s['max'] / 1000:,.1f}", f"{s['iqr_pct']}%",
                         f"{s['ratio_vs_transformers']:.2f}x", s["batch_docs"],
                         C.fmt_mib(s["peak_mem_bytes"])])
    st = payload["settings"]
    lines = [
        "### Inference (encoder forward, the paper's four sets)", "",
        f"Machine: {C.machine_line(payload['machine'])}.", "",
        f"Model: {payload['model']}; FlexBERT kernel `{payload['kernel']}`, transformers attention "
        f"`{payload['hf_attention']}`. {st['reps']} timed passes over each whole set per "
        "implementation, interleaved, after one warm-up batch. Thousands of real tokens/s.", "",
        C.table(["set", "implementation", "k tokens/s (median)", "min-max", "IQR",
                 "vs transformers", "batch (docs)", "peak mem MiB (one batch)"], rows), "",
        "Sets: " + "; ".join(f"{r['set']} = {r['documents']} documents, {r['lengths']} "
                             f"({r['real_tokens']:,} tokens)" for r in payload["sets"]) + ".",
        f"Batch: {payload['batching']}. Peak memory: {payload['memory_method']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sets, 1 rep, no files")
    p.add_argument("--set-tokens", type=int, default=0,
                   help="about this many tokens per set (CPU default 32768; CUDA default 8192 docs)")
    p.add_argument("--docs", type=int, default=0, help="documents per set (overrides --set-tokens)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="CPU: about this many tokens per batch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--long-scale", type=int, default=0, help="divide 8192 lengths (default 1: none)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.long_scale = args.long_scale or 1  # the paper's lengths; > 1 shortens a slow CPU run
    if cuda:
        tree, dtype, kernel = C.BASE, torch.bfloat16, C.best_kernel()
        args.docs = args.docs or 8192
    else:
        tree, dtype, kernel = C.SMALL, torch.float32, "sdpa"
        args.set_tokens = args.set_tokens or 32768
    if args.quick:
        args.set_tokens, args.docs, args.reps, args.long_scale = 4096, 0, 1, max(args.long_scale, 8)
    encoders = build(device, dtype, tree, kernel)
    payload = {"benchmark": "inference", "machine": C.machine(device),
               "model": ("ModernBERT-base shape, bf16" if cuda else
                         "small config (6 layers, hidden 256, 4 heads, intermediate 384, local "
                         "window 128, every 3rd layer global), fp32"),
               "kernel": kernel,
               "hf_attention": "flash_attention_2" if cuda and C.flash_attn_installed() else "sdpa",
               "batching": ("largest batch of the set's longest documents that fits, per "
                            "implementation (doubling from 8)" if cuda else
                            f"a fixed {args.batch_tokens} tokens' worth of documents (at the mean "
                            "length) per batch, one document per row padded to the longest"),
               "settings": {k: getattr(args, k) for k in ("set_tokens", "docs", "batch_tokens",
                                                           "reps", "long_scale", "quick")},
               "memory_method": C.MEMORY_METHOD[device.type], "sets": []}
    for case in C.paper_cases(args.long_scale):
        result = run_set(case, encoders, args, device, tree)
        payload["sets"].append(result)
        print(case.name, {k: (v["tokens_per_s"], v["ratio_vs_transformers"])
                          for k, v in result["impls"].items()}, flush=True)
    md = markdown(payload)
    print(md)
    if args.no_write or args.quick:
        return
    name = "inference_gpu" if cuda else "inference"
    C.write_results(name, payload, md)
    where = payload["machine"].get("gpu") or payload["machine"]["cpu"]
    C.plot(name, f"Inference tokens/s, {where}", [r["set"] for r in payload["sets"]],
           {n: [r["impls"][n]["tokens_per_s"] for r in payload["sets"]] for n in IMPLS})
    C.update_doc(name, md)


if __name__ == "__main__":
    main()
