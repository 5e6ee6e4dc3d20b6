"""GPU acceptance: the checks no CPU can make, in one command of under 10 minutes on one GPU.

1. kernels: every attention kernel usable here, forward and backward against the fp32 sdpa
   reference under bf16 autocast, global and sliding window (local_window 128: 64 each side),
   packed documents; with attention dropout, finite and different from the dropout-free output;
2. RoPE at 8192 under torch FSDP (v1) with Composer's DEFAULT mixed precision for amp_bf16
   (buffer_dtype bf16): the rotary angles within 1e-3 rad of exact after FSDP's forward;
3. one compiled training step of ModernBERT-base on packed rows of 8192 (compile_options,
   duck sizing off around the call): dynamo graph count and graph breaks over 3 batches of
   different token and document counts;
4. tokens/s per GPU and MFU of base phase 1 (rows of 1024) and context extension (8192).

Writes gpu_acceptance.{json,md} (bench/common.save_results: --save or --out DIR). On a machine
without CUDA it prints one line starting "gpu_acceptance: SKIPPED" and exits 0.
Usage: python bench/gpu_acceptance.py [--out DIR | --save]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import common as C

SKIP_LINE = "gpu_acceptance: SKIPPED: no CUDA device here; run it on a machine with one GPU"


def _packed(lengths: list[int], device):
    """The unpadded layout of documents of these lengths packed into one [T] row."""
    from flexbert.model.attention.layout import describe_batch

    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return describe_batch(torch.zeros(sum(lengths), dtype=torch.long, device=device),
                          cu_seqlens=cu.to(device), max_seqlen=max(lengths))


def check_kernels(device, lengths=(700, 130, 64, 1, 333, 1800), heads: int = 12,
                  head_dim: int = 64) -> list[dict]:
    """Each usable kernel vs sdpa in fp32 on the same bf16 q, k, v (unpadded layout). Runs on
    CPU too (tests/test_gpu_acceptance.py runs it small there, with the CPU kernels)."""
    from flexbert.model import KERNELS

    gen = torch.Generator(device="cpu").manual_seed(0)
    lengths = list(lengths)
    layout = _packed(lengths, device)
    T, H, D = sum(lengths), heads, head_dim
    base = [torch.randn(T, H, D, generator=gen).to(device, torch.bfloat16) for _ in range(3)]
    grad_out = torch.randn(T, H, D, generator=gen).to(device)
    rows = []
    for window in (None, 64):
        ref_in = [x.float().requires_grad_() for x in base]
        ref = KERNELS.get("sdpa")(*ref_in, layout, window, 0.0)
        ref.backward(grad_out)
        for name in KERNELS.names():
            spec = KERNELS.get(name)
            if "unpadded" not in spec.layouts or spec.available() is not None:
                continue
            if window is not None and not spec.supports_window:
                continue
            row = {"kernel": name, "window": window}
            x = [t.clone().requires_grad_() for t in base]
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = spec(*x, layout, window, 0.0)
                out.float().backward(grad_out)
            except RuntimeError as err:  # a kernel that refuses training here (flex on CPU, new torch)
                rows.append({**row, "ok": None, "skipped": str(err).splitlines()[0]})
                continue
            row["out_max_abs_err"] = float((out.float() - ref).abs().max())
            row["grad_max_rel_err"] = max(float((a.grad.float() - b.grad).abs().max()
                                                / b.grad.abs().max()) for a, b in zip(x, ref_in))
            row["ok"] = row["out_max_abs_err"] < 3e-2 and row["grad_max_rel_err"] < 5e-2
            if spec.supports_dropout:
                torch.manual_seed(0)
                y = [t.clone().requires_grad_() for t in base]
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    dropped = spec(*y, layout, window, 0.1)
                dropped.float().backward(grad_out)
                row["dropout_finite"] = bool(torch.isfinite(dropped).all()) and all(
                    bool(torch.isfinite(t.grad).all()) for t in y)
                row["dropout_changes_output"] = bool((dropped.float() - out.float()).abs().max() > 1e-3)
                row["ok"] = row["ok"] and row["dropout_finite"] and row["dropout_changes_output"]
            rows.append(row)
            print("kernel", row, flush=True)
    return rows


def check_rope_under_fsdp_v1(device) -> dict:
    """FSDP (v1) with Composer's DEFAULT mixed precision for amp_bf16 casts floating buffers to
    bf16 in the first forward; the rotary angles at 8192 must stay fp32-exact."""
    import torch.distributed as dist
    from composer.distributed.mosaic_parallelism import get_mixed_precision
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from flexbert.model import FlexBertForMaskedLM

    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1, store=dist.HashStore())
    cfg = C.model_cfg(C.base_tree(), padding="unpadded", **{"attention.kernel": "sdpa", "num_layers": 3})
    model = FlexBertForMaskedLM(cfg).to(device)
    mixed, _, _, buffer_dtype = get_mixed_precision("amp_bf16", "DEFAULT")
    wrapped = FSDP(model, mixed_precision=mixed, device_id=device, use_orig_params=True)
    ids = torch.randint(5, 1000, (8192,), device=device)
    cu = torch.tensor([0, 8192], dtype=torch.int32, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        wrapped(input_ids=ids, cu_seqlens=cu, max_seqlen=8192)
    rotary = model.model.position
    positions = torch.arange(8193, device=device)
    cos, sin = rotary.prepare(positions[None])[True]
    half = cfg.head_dim // 2
    used = torch.atan2(sin[..., :half], cos[..., :half]).double().squeeze().cpu()
    exact = positions.double().cpu()[:, None] / cfg.position.global_theta ** (
        torch.arange(0, cfg.head_dim, 2).double() / cfg.head_dim)
    err = float((torch.remainder(used - exact + math.pi, 2 * math.pi) - math.pi).abs().max())
    floating_buffers = [n for n, b in model.named_buffers() if torch.is_floating_point(b)]
    result = {"buffer_dtype": str(buffer_dtype), "max_phase_error_rad_at_8192": err,
              "floating_buffers": floating_buffers, "ok": err < 1e-3}
    print("rope", result, flush=True)
    return result


def check_compiled_step(device) -> dict:
    """Base at 8192, unpadded, compiled as the trainer compiles it; graphs over 3 batches."""
    from torch._dynamo.utils import counters

    from flexbert.model import FlexBertForMaskedLM
    from flexbert.model.compile import compile_options, without_duck_shapes

    from gpu_throughput import packed_batches

    torch._dynamo.reset()
    counters.clear()
    cfg = C.model_cfg(C.base_tree(), padding="unpadded", **{"attention.kernel": C.best_kernel()})
    model = FlexBertForMaskedLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model, **compile_options())
    forward = without_duck_shapes(compiled)
    gen = torch.Generator().manual_seed(1)
    batches = packed_batches(8192, 1, 3, cfg.vocab_size, cfg.mask_token_id, gen)
    losses, seconds = [], []
    for b in batches:
        b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=b["input_ids"], cu_seqlens=b["cu_seqlens"],
                           max_seqlen=b["max_seqlen"], labels=b["labels"],
                           prediction_indices=b["prediction_indices"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        seconds.append(time.perf_counter() - start)
    graphs = int(counters["stats"]["unique_graphs"])
    breaks = sum(counters["graph_break"].values())
    result = {"kernel": cfg.attention.kernel, "graphs": graphs, "graph_breaks": breaks,
              "losses": losses, "step_seconds": seconds,
              "ok": all(math.isfinite(x) for x in losses) and graphs <= 3 and breaks == 0}
    print("compiled step", result, flush=True)
    return result


def measure_throughput(device, steps: int = 10, warmup: int = 3) -> list[dict]:
    """tokens/s per GPU and MFU, base phase 1 (1024) and context extension (8192); MFU uses the
    trainer's FLOP model and peak table (flexbert.train.callbacks.telemetry)."""
    from flexbert.model import FlexBertForMaskedLM
    from flexbert.model.compile import compile_options, without_duck_shapes
    from flexbert.runtime.perf import device_peak_flops, flops_per_token

    from gpu_throughput import packed_batches, run_case

    peak = device_peak_flops()
    out = []
    for phase, seq_len, rows, theta in (("phase 1", 1024, 16, 10000.0),
                                        ("context extension", 8192, 2, 160000.0)):
        torch._dynamo.reset()
        cfg = C.model_cfg(C.base_tree(), padding="unpadded", **{"attention.kernel": C.best_kernel(),
                                                           "position.global_theta": theta})
        model = FlexBertForMaskedLM(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step_model = without_duck_shapes(torch.compile(model, **compile_options()))
        gen = torch.Generator().manual_seed(2)
        batches = packed_batches(seq_len, rows, 4, cfg.vocab_size, cfg.mask_token_id, gen)
        res = run_case(step_model, opt, batches, steps, warmup, device)
        tokens = [len(b["input_ids"]) for b in batches]
        stats = C.summarize(res["times"], [tokens[i % len(tokens)] for i in range(steps)])
        per_token = flops_per_token(cfg, seq_len, 0.3)
        mfu = stats["tokens_per_s"] * per_token / peak if peak else None
        row = {"phase": phase, "seq_len": seq_len, "rows": rows, "tokens_per_s": stats["tokens_per_s"],
               "mfu": mfu, "peak_flops": peak, "peak_mem_bytes": res["peak_mem_bytes"]}
        print("throughput", row, flush=True)
        out.append(row)
    return out


def markdown(payload: dict) -> str:
    lines = [f"GPU acceptance on {C.machine_line(payload['machine'])}", ""]
    lines.append(C.table(["kernel", "window", "max |out - ref|", "max grad rel err", "dropout ok", "ok"],
                         [[r["kernel"], r["window"] or "global",
                           f"{r['out_max_abs_err']:.2e}" if "skipped" not in r else r["skipped"],
                           f"{r['grad_max_rel_err']:.2e}" if "skipped" not in r else "-",
                           r.get("dropout_finite", "n/a") and r.get("dropout_changes_output", "n/a"),
                           r["ok"]] for r in payload["kernels"]]))
    rope = payload["rope_fsdp_v1"]
    lines += ["", f"RoPE at 8192 under FSDP v1 (buffer_dtype {rope['buffer_dtype']}): max phase "
              f"error {rope['max_phase_error_rad_at_8192']:.2e} rad (ok: {rope['ok']})"]
    step = payload["compiled_step"]
    lines += ["", f"Compiled base step at 8192 ({step['kernel']}): {step['graphs']} graph(s), "
              f"{step['graph_breaks']} graph break(s), losses {', '.join(f'{x:.3f}' for x in step['losses'])}"]
    lines += ["", C.table(["phase", "seq len", "rows", "tokens/s per GPU", "MFU"],
                          [[r["phase"], r["seq_len"], r["rows"], C.fmt_int(r["tokens_per_s"]),
                            f"{100 * r['mfu']:.1f}%" if r["mfu"] else "peak unknown"]
                           for r in payload["throughput"]])]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per throughput case")
    C.add_output_args(p)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(SKIP_LINE, flush=True)
        return 0
    device = torch.device("cuda")
    start = time.perf_counter()
    payload = {"benchmark": "gpu_acceptance", "machine": C.machine(device)}
    payload["kernels"] = check_kernels(device)
    payload["rope_fsdp_v1"] = check_rope_under_fsdp_v1(device)
    payload["compiled_step"] = check_compiled_step(device)
    payload["throughput"] = measure_throughput(device, args.steps)
    payload["seconds"] = time.perf_counter() - start
    payload["ok"] = (all(r["ok"] is not False for r in payload["kernels"]) and payload["rope_fsdp_v1"]["ok"]
                     and payload["compiled_step"]["ok"])
    C.save_results(args, "gpu_acceptance", payload, markdown(payload))
    print(f"gpu_acceptance: {'PASSED' if payload['ok'] else 'FAILED'} in "
          f"{payload['seconds']:.0f}s", flush=True)
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
