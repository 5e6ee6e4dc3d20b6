"""GPU training throughput: ModernBERT-base, packed rows of 1024 (and 8192), bf16 autocast,
torch.compile, the fastest FlexBERT kernel available; tokens/s per GPU and MFU vs the device peak.
The step is the trainer's: configs/base.yaml's optimizer (StableAdamW) and precision, and the
compile options train.py passes to Composer (flexbert.model.compile.compile_options).

CUDA only: on a machine without a GPU it says so and writes nothing (--quick there runs the code
path on a small CPU config).
Usage: python bench/gpu_throughput.py [--quick] [--kernel flash_attn] [--batch 32] [--steps 20]
       [--peak-tflops 989] [--no-compile] [--save]
With --save, writes bench/results/gpu_throughput.{json,md} and the GPU table in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import common as C

from flexbert.runtime.perf import peak_flops, step_flops



def device_peak(name: str, override: float) -> tuple[float, str]:
    """The peak from flexbert.runtime.perf's table (the one the trainer's MFU uses)."""
    if override:
        return override * 1e12, "given with --peak-tflops"
    peak = peak_flops(name)
    if peak is None:
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops with its dense bf16 peak")
    return peak, "dense bf16 data-sheet peak (flexbert.runtime.perf.PEAK_FLOPS)"


def packed_batches(seq_len: int, rows: int, count: int, vocab: int, mask_id: int, gen):
    """Rows of exactly seq_len tokens packed from documents ~ normal(seq_len/2, seq_len/4) in
    [16, seq_len] (a document that does not fit is cut, as the data pipeline splits documents);
    the flat [T] form with cu_seqlens and max_seqlen given, so the step needs no host sync."""
    out = []
    for _ in range(count):
        lengths = []
        for _ in range(rows):
            left = seq_len
            while left:
                n = int(torch.randn(1, generator=gen).mul(seq_len / 4).add(seq_len / 2)
                        .clamp(16, seq_len))
                lengths.append(min(n, left))
                left -= lengths[-1]
        T = rows * seq_len
        ids = torch.randint(5, vocab, (T,), generator=gen)
        chosen = torch.rand(T, generator=gen) < 0.3
        cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        out.append({"input_ids": ids.masked_fill(chosen, mask_id), "labels": ids.masked_fill(~chosen, -100),
                    "cu_seqlens": cu, "max_seqlen": max(lengths), "lengths": lengths,
                    "prediction_indices": chosen.nonzero().squeeze(1)})
    return out


AUTOCAST = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def trainer_setup(model, device):
    """The optimizer, compile options and precision train.py uses for configs/base.yaml, so the
    bench times the trainer's own step (StableAdamW, compile_options(), amp_bf16)."""
    from flexbert.model.compile import compile_options
    from flexbert.train.optim import build_optimizer
    from flexbert.train.recipe.load import load_recipe

    recipe = load_recipe(C.ROOT / "configs" / "base.yaml")
    optimizer = build_optimizer(model, recipe.cfg.optimizer)
    return optimizer, compile_options(), recipe.cfg.trainer.precision


def run_case(model, opt, batches, steps: int, warmup: int, device, precision: str) -> dict:
    dtype = AUTOCAST.get(precision)

    def step(b):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32,
                            enabled=device.type == "cuda" and dtype is not None):
            loss = model(input_ids=b["input_ids"], cu_seqlens=b["cu_seqlens"],
                         max_seqlen=b["max_seqlen"], labels=b["labels"],
                         prediction_indices=b["prediction_indices"]).loss
        loss.backward()
        opt.step()

    on_device = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
                 for b in batches]
    for i in range(warmup):  # compiles every batch shape
        step(on_device[i % len(on_device)])
    times = C.alternate({"step": lambda i: step(on_device[i % len(on_device)])}, steps, 0, device)
    mem = C.peak_memory(lambda: step(on_device[0]), device)
    return {"times": times["step"], "peak_mem_bytes": mem}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--kernel", default="", help="FlexBERT attention kernel ('': fastest here)")
    p.add_argument("--batch", type=int, default=32, help="rows of 1024 per micro-batch")
    p.add_argument("--batch-8192", type=int, default=4, help="rows of 8192 per micro-batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="the device's dense bf16 peak for MFU (0: looked up by device name)")
    p.add_argument("--no-compile", action="store_true", help="eager instead of torch.compile")
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)  # = --quick on CPU
    C.add_output_args(p, "3 timed steps after 1 warm-up; without CUDA, the small CPU config")
    args = p.parse_args()
    if args.quick and not torch.cuda.is_available():
        args.cpu_smoke = True
    elif args.quick:
        args.steps, args.warmup = 3, 1
    if not torch.cuda.is_available() and not args.cpu_smoke:  # --quick set cpu_smoke above
        print("bench/gpu_throughput.py: no CUDA device here, so there is nothing to measure; "
              "no results written. Run it on a GPU machine.")
        return
    device = torch.device("cuda" if not args.cpu_smoke else "cpu")
    tree = C.base_tree() if not args.cpu_smoke else C.SMALL
    kernel = args.kernel or (C.best_kernel() if not args.cpu_smoke else "sdpa")
    from flexbert.model import FlexBertForMaskedLM

    torch.manual_seed(0)
    cfg = C.model_cfg(tree, padding="unpadded", **{"attention.kernel": kernel})
    model = FlexBertForMaskedLM(cfg).to(device).train()
    opt, compile_kwargs, precision = trainer_setup(model, device)
    compiled = not args.no_compile and not args.cpu_smoke
    if compiled:
        model = torch.compile(model, **compile_kwargs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu smoke"
    peak, peak_src = device_peak(name, args.peak_tflops or (1.0 if args.cpu_smoke else 0.0))
    gen = torch.Generator().manual_seed(0)
    cases = [(1024, args.batch), (8192, args.batch_8192)]
    if args.cpu_smoke:
        cases, args.steps, args.warmup = [(256, 2), (512, 1)], 2, 1
    payload = {"benchmark": "gpu_throughput", "machine": C.machine(device), "kernel": kernel,
               "compiled": compiled, "precision": f"{precision} (configs/base.yaml), fp32 weights, {type(opt).__name__}",
               "peak_flops": peak, "peak_source": peak_src, "memory_method": C.MEMORY_METHOD[device.type],
               "cases": []}
    for seq_len, rows in cases:
        batches = packed_batches(seq_len, rows, 4, cfg.vocab_size, cfg.mask_token_id, gen)
        res = run_case(model, opt, batches, args.steps, args.warmup, device, precision)
        flops = [step_flops(cfg, b["lengths"], b["prediction_indices"].numel()) for b in batches]
        tokens = [len(b["input_ids"]) for b in batches]
        rep_tokens = [tokens[i % len(batches)] for i in range(args.steps)]
        rep_flops = [flops[i % len(batches)] for i in range(args.steps)]
        stats = C.summarize(res["times"], rep_tokens)
        mfu = statistics.median(f / t / peak for f, t in zip(rep_flops, res["times"]))
        payload["cases"].append({"seq_len": seq_len, "rows": rows, "tokens_per_step": tokens[0],
                                 "docs_per_step": statistics.mean(len(b["lengths"]) for b in batches),
                                 **stats, "mfu": round(mfu, 4), "peak_mem_bytes": res["peak_mem_bytes"]})
        print(seq_len, stats["tokens_per_s"], f"MFU {mfu:.1%}", flush=True)
    rows = [[f"packed {c['seq_len']}", c["rows"], C.fmt_int(c["tokens_per_s"]),
             f"{C.fmt_int(c['min'])}-{C.fmt_int(c['max'])}", f"{100 * c['mfu']:.1f}%",
             C.fmt_mib(c["peak_mem_bytes"])] for c in payload["cases"]]
    md = "\n".join([
        "### GPU training throughput (ModernBERT-base)", "",
        f"Device: {name}; {C.machine_line(payload['machine'])}. Kernel `{kernel}`, "
        f"{'torch.compile' if compiled else 'eager'}, {payload['precision']}. MFU = model FLOPs "
        f"(matmuls + exact attention pairs, x3 for training) / time / {peak / 1e12:.0f} TFLOP/s "
        f"({peak_src}).", "",
        C.table(["case", "rows", "tokens/s per GPU (median)", "min-max", "MFU", "peak mem MiB"], rows),
        "", "Targets: >= 350,000 tokens/s per GPU and >= 35% MFU at 1024 packed (H100).",
    ])
    print(md)
    if args.cpu_smoke:
        args.quick = True  # CPU figures never replace GPU ones
    C.save_results(args, "gpu_throughput", payload, md, doc_section="gpu_throughput")


if __name__ == "__main__":
    sys.exit(main())
