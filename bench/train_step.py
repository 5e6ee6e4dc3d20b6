"""Training-step throughput: FlexBERT (padded and unpadded) vs transformers' ModernBertForMaskedLM.

A step is forward + backward + AdamW step on an MLM batch (30% of real tokens masked, sparse
prediction on both sides). All three models start from the same weights (`to_transformers`), see
the same batches, and are timed alternately in one process. tokens/s counts real tokens only.
Every step gets a fresh batch (new lengths, masks, gather plans), as in training; `--cycle N`
cycles N batches instead. Per case: the measured speed-up over transformers, the FLOP ratio
(`executed_flops`) and their quotient, the per-FLOP efficiency. Also timed: the GPU path's
per-batch work (`describe_batch`, FlexAttention block masks) for base-sized batches.

Usage: python bench/train_step.py [--quick] [--save | --out DIR] [--cycle N] [--reps 7]
Only --save writes bench/results/train_step.{json,md,png} and the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import zlib

import torch

import common as C

IMPLS = ("transformers", "flexbert padded", "flexbert unpadded")


def cases(long_scales: list[int]) -> list[C.LengthCase]:
    """Fixed 512, variable 512, then variable 8192 divided by each scale (1: the paper's lengths)."""
    fixed, variable = C.paper_cases(1)[:2]
    return [fixed, variable] + [C.paper_cases(s)[3] for s in long_scales]


def build(args) -> dict:
    flex_unpadded, hf = C.flex_and_hf(C.SMALL, padding="unpadded")
    flex_padded, _ = C.flex_and_hf(C.SMALL, padding="padded")
    flex_padded.load_state_dict(flex_unpadded.state_dict())
    models = {"transformers": hf, "flexbert padded": flex_padded, "flexbert unpadded": flex_unpadded}
    steps = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                                weight_decay=1e-5)
        steps[name] = _stepper(model, opt)
    return steps


def _stepper(model, opt):
    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        return loss

    return step


def run_case(case: C.LengthCase, steps: dict, args, device) -> dict:
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    mean_len = case.mean / case.scale
    tokens = args.long_tokens if case.mean > 512 else args.tokens
    docs = max(2, round(tokens / mean_len))  # two documents at least, so padding exists
    distinct = args.cycle or args.warmup + args.reps  # fresh: one new batch per call
    batches = [C.padded_batch(case.sample(docs, gen), C.SMALL["vocab_size"], C.SMALL["pad_token_id"],
                              gen, mlm_prob=0.3, mask_id=C.SMALL["mask_token_id"])
               for _ in range(distinct)]
    timed = [batches[i % distinct] for i in range(args.warmup, args.warmup + args.reps)]
    impls = {name: (lambda i, f=fn: f(batches[i % distinct])) for name, fn in steps.items()}
    times = C.alternate(impls, args.reps, args.warmup, device)
    result = {"case": case.name, "lengths": case.describe(), "docs_per_batch": docs,
              "mean_real_tokens_per_batch": round(statistics.mean(map(C.real_tokens, timed))),
              "mean_padded_tokens_per_batch": round(statistics.mean(b["input_ids"].numel()
                                                                    for b in timed))}
    result["impls"] = C.summarize_impls(
        times, [C.real_tokens(b) for b in timed],
        lambda name: C.peak_memory(lambda: steps[name](batches[0]), device))
    cfg = C.model_cfg(C.SMALL)
    flops = {name: [_flops(cfg, b, name) for b in timed] for name in steps}
    for name, summary in result["impls"].items():
        summary["executed_gflops"] = round(statistics.mean(flops[name]) / 1e9, 2)
    # Paired per batch: the same batch's times and FLOPs, then medians over the batches.
    ref, ours = times["transformers"], times["flexbert unpadded"]
    ratios = [a / b for a, b in zip(flops["transformers"], flops["flexbert unpadded"])]
    speedups = [a / b for a, b in zip(ref, ours)]
    result["flop_ratio"] = round(statistics.median(ratios), 3)
    result["speedup"] = round(statistics.median(speedups), 3)
    result["efficiency"] = round(statistics.median(s / r for s, r in zip(speedups, ratios)), 3)
    return result


def _flops(cfg, batch: dict, impl: str) -> float:
    lengths = batch["attention_mask"].sum(1).tolist()
    masked = int((batch["labels"] != -100).sum())
    return C.executed_flops(cfg, lengths, masked, impl)


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["cases"]:
        for name in IMPLS:
            s = r["impls"][name]
            rows.append([r["case"], name, C.fmt_int(s["tokens_per_s"]),
                         f"{C.fmt_int(s['min'])}-{C.fmt_int(s['max'])}", f"{s['iqr_pct']}%",
                         f"{s['ratio_vs_transformers']:.2f}x", f"{s['executed_gflops']:,.1f}",
                         C.fmt_mib(s["peak_mem_bytes"])])
    cfg = payload["config"]
    lines = [
        "### Training step (forward + backward + AdamW)", "",
        f"Machine: {C.machine_line(payload['machine'])}.", "",
        f"Model: {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, {cfg['attention']['num_heads']} "
        f"heads, GeGLU intermediate {cfg['mlp']['intermediate_size']}, vocab {cfg['vocab_size']}, local "
        f"window {cfg['attention']['local_window']} with every {cfg['attention']['global_every_n_layers']}rd "
        f"layer global, fp32, FlexBERT kernel `{cfg['attention']['kernel']}`; 30% MLM masking, sparse "
        f"prediction on both sides. About {payload['settings']['tokens']} real tokens per batch (variable 8192 cases: "
        f"{payload['settings'].get('long_tokens', payload['settings']['tokens'])}), one "
        f"document per row padded to the batch's longest; {_batches_line(payload['settings'])}; "
        f"{payload['settings']['warmup']} warm-up and {payload['settings']['reps']} timed steps per "
        "implementation, interleaved (every implementation gets the same batch at each step).", "",
        C.table(["case", "implementation", "tokens/s (median)", "min-max", "IQR", "vs transformers",
                 "GFLOP/step", "peak mem MiB"], rows), "",
        "GFLOP/step is what each implementation executes (bench/common.py `executed_flops`): "
        "transformers and FlexBERT padded spend matmuls on pad slots and every (query, key) pair "
        "of a row in every layer; FlexBERT unpadded spends them on real tokens, documents and "
        "windows only. transformers' GFLOP over FlexBERT unpadded's is the speed-up that FLOPs "
        "alone account for (measured ratios above it come from per-FLOP efficiency: masked dense "
        "attention and padding cost transformers more than their FLOPs): "
        + "; ".join(f"{r['case']} {r['flop_ratio']:.2f}x" for r in payload["cases"]) + ".", "",
        "Per-FLOP efficiency of FlexBERT unpadded: per batch, transformers' step time over ours "
        "(speed-up) and transformers' executed FLOPs over ours (FLOP ratio); medians over the "
        "timed batches. Efficiency 1.00 turns the whole FLOP advantage into speed.", "",
        C.table(["case", "speed-up vs transformers", "FLOP ratio", "efficiency"],
                [[r["case"], f"{r['speedup']:.2f}x", f"{r['flop_ratio']:.2f}x", f"{r['efficiency']:.2f}"]
                 for r in payload["cases"]]), "",
        "Case lengths: " + "; ".join(f"{r['case']} = {r['lengths']} ({r['docs_per_batch']} docs, "
                                      f"{r['mean_real_tokens_per_batch']:,} real of "
                                      f"{r['mean_padded_tokens_per_batch']:,} padded tokens per batch)"
                                      for r in payload["cases"]) + ".",
        f"Peak memory: {payload['memory_method']}.",
    ]
    return "\n".join(lines)


def _batches_line(settings: dict) -> str:
    if settings.get("cycle"):
        return f"{settings['cycle']} distinct batches cycled"
    return "a fresh batch for every step, warm-up included (no batch is seen twice)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small batches, 2 reps")
    p.add_argument("--tokens", type=int, default=4096, help="real tokens per batch (about)")
    p.add_argument("--reps", type=int, default=7, help="timed steps per implementation (>= 6 "
                   "for the issue-16 medians)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cycle", type=int, default=0,
                   help="cycle this many distinct batches (0, the default: a fresh batch every step)")
    p.add_argument("--long-tokens", type=int, default=8192,
                   help="real tokens per batch (about) of the variable-8192 cases: at / 2 that is "
                        "4 documents of normal(2048, 512)")
    p.add_argument("--only", nargs="+", default=None, help="run only these cases (by name)")
    p.add_argument("--long-scale", type=int, nargs="+", default=[1, 2],
                   help="divide the variable-8192 case's lengths by each of these (1: unscaled)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-mask-costs", action="store_true", help="skip the block-mask timings")
    C.add_output_args(p)
    args = p.parse_args()
    if args.quick:
        args.tokens, args.long_tokens, args.reps, args.warmup, args.long_scale = 1024, 1024, 2, 1, [8]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    steps = build(args)
    from omegaconf import OmegaConf

    payload = {"benchmark": "train_step", "machine": C.machine(device),
               "config": OmegaConf.to_container(OmegaConf.create(C.SMALL)),
               "settings": {k: getattr(args, k) for k in ("tokens", "long_tokens", "reps", "warmup", "cycle",
                                                           "long_scale", "quick")},
               "memory_method": C.MEMORY_METHOD[device.type], "cases": []}
    for case in cases(args.long_scale):
        if args.only and case.name not in args.only:
            continue
        result = run_case(case, steps, args, device)
        payload["cases"].append(result)
        print(case.name, {k: (v["tokens_per_s"], v["ratio_vs_transformers"])
                          for k, v in result["impls"].items()}, flush=True)
    if not args.no_mask_costs:
        from mask_costs import mask_costs, mask_costs_markdown

        payload["mask_costs"] = mask_costs(1 if args.quick else 5)
    md = markdown(payload)
    if "mask_costs" in payload:
        md += "\n\n" + mask_costs_markdown(payload["mask_costs"])
    print(md)
    C.save_results(args, "train_step", payload, md, "train_step", lambda: C.plot(
        "train_step", f"Training step tokens/s, {payload['machine']['cpu']}",
        [r["case"] for r in payload["cases"]],
        {name: [r["impls"][name]["tokens_per_s"] for r in payload["cases"]] for name in IMPLS}))


if __name__ == "__main__":
    main()
