"""Inference throughput, the ModernBERT paper's protocol: four document sets (fixed 512, variable
normal(256, 64) in [16, 512], fixed 8192, variable normal(4096, 1024) in [16, 8192]), thousands of
real tokens/s through the encoder, FlexBERT (padded, unpadded) vs transformers' ModernBERT.

CPU: the small config, fewer documents per set (full lengths unless --long-scale divides the
8192 sets' lengths), a fixed batch of documents. CUDA: ModernBERT-base in bf16, full lengths, and
the largest batch (doubling until out of memory) that fits for each implementation, as the paper
did.

Every timed pass draws a fresh set of documents (new lengths, so new layouts and masks), as
serving does; `--cycle N` reuses N sets instead. Per set: the speed-up over transformers, the FLOP
ratio (`executed_flops`) and their quotient, the per-FLOP efficiency.

Usage: python bench/inference.py [--quick] [--save | --out DIR] [--cycle N] [--reps 3]
Only --save writes bench/results/inference.{json,md,png} (inference_gpu.* on CUDA) and
docs/performance.md.
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
    draws = [case.sample(n_docs, gen) for _ in range(args.cycle or args.reps + 1)]  # +1: warm-up
    if device.type == "cuda":
        sizes = {n: largest_batch(e, draws[0], tree, gen, device) for n, e in encoders.items()}
    else:
        per = max(1, round(args.batch_tokens / mean_len))
        sizes = {n: per for n in encoders}
    sets = [{n: batches_of(lengths, sizes[n], tree, gen, device) for n in encoders} for lengths in draws]

    def runner(name):
        def run(i):
            with torch.inference_mode():
                for b in sets[i % len(sets)][name]:
                    encoders[name](b)
        return run

    def one_batch(name):
        with torch.inference_mode():
            encoders[name](sets[0][name][0])

    times = C.alternate({n: runner(n) for n in encoders}, args.reps, 1, device)
    timed = [draws[i % len(draws)] for i in range(1, args.reps + 1)]
    result = {"set": case.name, "lengths": case.describe(), "documents": n_docs,
              "real_tokens": round(statistics.mean(map(sum, timed)))}
    result["impls"] = C.summarize_impls(
        times, [sum(x) for x in timed], lambda name: C.peak_memory(lambda: one_batch(name), device))
    for name, stats in result["impls"].items():
        stats["batch_docs"] = sizes[name]
    cfg = C.model_cfg(tree)
    ratios = [_set_flops(cfg, x, sizes["transformers"], "transformers")
              / _set_flops(cfg, x, sizes["flexbert unpadded"], "flexbert unpadded") for x in timed]
    speedups = [a / b for a, b in zip(times["transformers"], times["flexbert unpadded"])]
    result["flop_ratio"] = round(statistics.median(ratios), 3)
    result["speedup"] = round(statistics.median(speedups), 3)
    result["efficiency"] = round(statistics.median(s / r for s, r in zip(speedups, ratios)), 3)
    return result


def _set_flops(cfg, lengths: list[int], batch: int, impl: str) -> float:
    """Executed FLOPs over a whole set, batch by batch (no masked tokens: encoder only)."""
    return sum(C.executed_flops(cfg, lengths[i:i + batch], 0, impl)
               for i in range(0, len(lengths), batch))


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
        f"`{payload['hf_attention']}`. {st['reps']} timed passes over a whole set per "
        "implementation, interleaved, after one warm-up pass; "
        + (f"{st['cycle']} sets cycled" if st.get("cycle") else "a fresh set of documents per pass")
        + ". Thousands of real tokens/s.", "",
        C.table(["set", "implementation", "k tokens/s (median)", "min-max", "IQR",
                 "vs transformers", "batch (docs)", "peak mem MiB (one batch)"], rows), "",
        "Per-FLOP efficiency of FlexBERT unpadded (medians over the passes; executed FLOPs from "
        "`executed_flops`):", "",
        C.table(["set", "speed-up vs transformers", "FLOP ratio", "efficiency"],
                [[r["set"], f"{r['speedup']:.2f}x", f"{r['flop_ratio']:.2f}x", f"{r['efficiency']:.2f}"]
                 for r in payload["sets"]]), "",
        "Sets: " + "; ".join(f"{r['set']} = {r['documents']} documents, {r['lengths']} "
                             f"(about {r['real_tokens']:,} tokens)" for r in payload["sets"]) + ".",
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
    p.add_argument("--cycle", type=int, default=0,
                   help="reuse this many document sets (0, the default: a fresh set every pass)")
    C.add_output_args(p)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.long_scale = args.long_scale or 1  # the paper's lengths; > 1 shortens a slow CPU run
    if cuda:
        tree, dtype, kernel = C.base_tree(), torch.bfloat16, C.best_kernel()
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
                                                           "reps", "long_scale", "quick", "cycle")},
               "memory_method": C.MEMORY_METHOD[device.type], "sets": []}
    for case in C.paper_cases(args.long_scale):
        result = run_set(case, encoders, args, device, tree)
        payload["sets"].append(result)
        print(case.name, {k: (v["tokens_per_s"], v["ratio_vs_transformers"])
                          for k, v in result["impls"].items()}, flush=True)
    md = markdown(payload)
    print(md)
    name = "inference_gpu" if cuda else "inference"
    where = payload["machine"].get("gpu") or payload["machine"]["cpu"]
    C.save_results(args, name, payload, md, name, lambda: C.plot(
        name, f"Inference tokens/s, {where}", [r["set"] for r in payload["sets"]],
        {n: [r["impls"][n]["tokens_per_s"] for r in payload["sets"]] for n in IMPLS}))

if __name__ == "__main__":
    main()
