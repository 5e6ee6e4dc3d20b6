"""MLM loss over the vocabulary: torch's cross entropy vs FlexBERT's chunked one, forward + backward.

Cases: the CPU bench's small config (vocab 8192) and ModernBERT-base's vocabulary (50,368), each
at the masked-token count of a 4096-token batch (30%) and, for base, of a 16,384-token one.
Reports time (median of interleaved repetitions) and the memory each needs on top of the logits
and their gradient, which both must hold.

Usage: python bench/loss.py [--quick] [--reps 5] [--save]
With --save, writes bench/results/loss.{json,md} and its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import common as C

CASES = [("small, 4096 tokens", 1229, 8192), ("base, 4096 tokens", 1229, 50368),
         ("base, 16384 tokens", 4915, 50368)]


def impls(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    from flexbert.model.loss import chunked_cross_entropy

    def run(loss_fn):
        def step(_rep: int = 0) -> None:
            logits.grad = None
            loss_fn().backward()
        return step

    return {"torch F.cross_entropy": run(lambda: F.cross_entropy(logits.float(), targets)),
            "flexbert chunked": run(lambda: chunked_cross_entropy(logits, targets))}


def run_case(name: str, rows: int, vocab: int, reps: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, vocab, generator=gen) * 2).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    steps = impls(logits, targets)
    times = C.alternate(steps, reps, 1, device)
    out = {"case": name, "rows": rows, "vocab": vocab, "impls": {}}
    for impl, step in steps.items():
        step()  # a gradient exists before measuring, so both deltas exclude it alike
        out["impls"][impl] = {"median_ms": round(1000 * statistics.median(times[impl]), 1),
                              "min_ms": round(1000 * min(times[impl]), 1),
                              "extra_mem_bytes": C.peak_memory(step, device)}
    return out


def markdown(payload: dict) -> str:
    rows = [[r["case"], f"{r['rows']:,} x {r['vocab']:,}", impl, s["median_ms"], s["min_ms"],
             C.fmt_mib(s["extra_mem_bytes"])]
            for r in payload["cases"] for impl, s in r["impls"].items()]
    return "\n".join([
        "### MLM loss (cross entropy over the vocabulary, forward + backward, fp32)", "",
        f"Machine: {C.machine_line(payload['machine'])}. {payload['settings']['reps']} interleaved "
        "repetitions after one warm-up. Extra memory: peak above what the logits and their "
        f"gradient already take; {payload['memory_method']}.", "",
        C.table(["case", "masked tokens x vocab", "implementation", "ms (median)", "ms (min)",
                 "extra mem MiB"], rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per case")
    C.add_output_args(p, "the first case only, 1 repetition")
    args = p.parse_args()
    device = torch.device("cpu")
    reps, cases = (1, CASES[:1]) if args.quick else (args.reps, CASES)
    payload = {"benchmark": "loss", "machine": C.machine(device), "settings": {"reps": reps},
               "memory_method": C.MEMORY_METHOD[device.type],
               "cases": [run_case(*case, reps, device) for case in cases]}
    md = markdown(payload)
    print(md)
    C.save_results(args, "loss", payload, md, doc_section="loss")


if __name__ == "__main__":
    main()
