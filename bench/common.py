"""Shared benchmark plumbing: the small CPU config, document-length cases, batches, alternating
timing with medians, peak memory, and writing JSON + markdown + PNG under bench/results/.

Every benchmark compares implementations on the *same* batches, timed in one process, alternating
implementation order each repetition so drift (other users on the machine, thermal) hits all alike.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PERF_DOC = ROOT / "docs" / "performance.md"

# Small config for CPU runs: ModernBERT's shape (GeGLU, pre-norm, local 128 / global every 3rd,
# rope 160k/10k, sparse prediction) at a width two cores can train. The vocabulary is cut to 8192
# so the MLM decoder keeps roughly base's share of the step's FLOPs (~10-15%); at hidden 256 the
# full 50368 vocabulary would make the decoder several times the size of the whole encoder.
SMALL = dict(
    vocab_size=8192, hidden_size=256, num_layers=6, max_position_embeddings=8192,
    pad_token_id=3, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
    mask_token_id=4, sparse_prediction=True,
    attention=dict(num_heads=4, global_every_n_layers=3, local_window=128, kernel="sdpa"),
    position=dict(global_theta=160000.0, local_theta=10000.0),
    mlp=dict(intermediate_size=384),
)



def base_tree() -> dict:
    """ModernBERT-base as the recipe ships it (configs/model/base.yaml), for GPU runs."""
    from omegaconf import OmegaConf

    tree = OmegaConf.load(ROOT / "configs" / "model" / "base.yaml")
    return OmegaConf.to_container(tree.model if "model" in tree else tree)


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def best_kernel() -> str:
    """The fastest FlexBERT kernel usable here: flash-attn, then FlexAttention, then SDPA."""
    from flexbert.model import KERNELS

    for name in ("flash_attn", "flex", "varlen_attn", "sdpa"):
        if KERNELS.get(name).available() is None:
            return name
    return "sdpa"


def model_cfg(tree: dict, **overrides: Any):
    """A validated ModelConfig from a preset plus dotted overrides ("attention.kernel": "flex")."""
    from omegaconf import OmegaConf

    from flexbert.model import model_config

    cfg = OmegaConf.create(tree)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return model_config(cfg, source="bench")


def flex_and_hf(tree: dict, padding: str = "unpadded", **overrides: Any):
    """A FlexBERT MLM model and transformers' ModernBertForMaskedLM (sdpa) with identical weights."""
    from flexbert.io.hf import to_transformers
    from flexbert.model import FlexBertForMaskedLM

    torch.manual_seed(0)
    flex = FlexBertForMaskedLM(model_cfg(tree, padding=padding, **overrides))
    hf = to_transformers(flex.train())
    hf.config._attn_implementation = "sdpa"
    return flex, hf


# --- document lengths -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LengthCase:
    """Document lengths: fixed, or normal(mean, std) clamped to [low, high], then divided by scale."""

    name: str
    mean: float
    std: float = 0.0
    low: int = 0
    high: int = 0
    scale: int = 1

    def sample(self, n: int, gen: torch.Generator) -> list[int]:
        if self.std == 0:
            raw = torch.full((n,), self.mean)
        else:
            raw = (torch.randn(n, generator=gen) * self.std + self.mean).clamp(self.low, self.high)
        return [max(1, int(round(x / self.scale))) for x in raw.tolist()]

    def describe(self) -> str:
        if self.std == 0:
            base = f"fixed {int(self.mean)}"
        else:
            base = f"normal({self.mean:g}, {self.std:g}) clamped to [{self.low}, {self.high}]"
        return base if self.scale == 1 else f"{base}, divided by {self.scale}"


def paper_cases(long_scale: int) -> list[LengthCase]:
    """The ModernBERT paper's four document sets; the long ones divided by `long_scale`."""
    return [
        LengthCase("fixed 512", 512),
        LengthCase("variable 512", 256, 64, 16, 512),
        LengthCase(f"fixed 8192/{long_scale}" if long_scale > 1 else "fixed 8192", 8192,
                   scale=long_scale),
        LengthCase(f"variable 8192/{long_scale}" if long_scale > 1 else "variable 8192",
                   4096, 1024, 16, 8192, scale=long_scale),
    ]


# --- FLOP counts (the model FLOPs themselves: flexbert.runtime.perf) ----------------------------------------------------------------------------------

def executed_flops(cfg, lengths: list[int], masked: int, impl: str) -> float:
    """FLOPs an implementation really spends on one step of one-document-per-row padded input.

    transformers and FlexBERT padded: every token slot of [B, S] through the matmuls, and all S^2
    pairs per row in every layer (local layers only mask). FlexBERT unpadded (sdpa kernel): real
    tokens only; global layers L^2 per document; local layers blocks of b queries x (b + 2w) keys.
    The ratio of two of these is the most an implementation can gain on matmul-bound hardware.
    """
    from flexbert.runtime.perf import linear_flops

    d, L, w = cfg.hidden_size, cfg.num_layers, cfg.attention.local_window // 2
    if impl != "flexbert unpadded":
        slots = len(lengths) * max(lengths)
        return float(linear_flops(cfg, slots, masked) + 12 * d * L * len(lengths) * max(lengths) ** 2)
    tokens, block = sum(lengths), max(w, 32)
    local = -(-tokens // block) * block * (block + 2 * w)
    pairs = sum(sum(n * n for n in lengths) if cfg.is_global_layer(i) else local for i in range(L))
    return float(linear_flops(cfg, tokens, masked) + 12 * d * pairs)


def padded_batch(lengths: list[int], vocab: int, pad_id: int, gen: torch.Generator,
                 mlm_prob: float = 0.0, mask_id: int = 4) -> dict[str, torch.Tensor]:
    """One document per row, right-padded to the longest; MLM labels when mlm_prob > 0.

    This is the form transformers' ModernBERT (sdpa) takes; FlexBERT gets the very same tensors.
    """
    width = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if mlm_prob > 0:
        chosen = (torch.rand(ids.shape, generator=gen) < mlm_prob) & mask.bool()
        batch["labels"] = ids.masked_fill(~chosen, -100)
        batch["input_ids"] = ids.masked_fill(chosen, mask_id)  # 100% [MASK]: the split is moot here
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())


# --- timing and memory ----------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(impls: dict[str, Callable[[int], Any]], reps: int, warmup: int,
              device: torch.device) -> dict[str, list[float]]:
    """Time each impl `reps` times, interleaved; each repetition rotates the starting impl.

    An impl is called with a call index (to pick a batch): warm-up calls get 0 .. warmup - 1 and
    timed ones warmup .. warmup + reps - 1, so a fresh-batch benchmark never times a batch it
    warmed up on. It must do all its work before returning; CUDA is synchronised around each call.
    """
    names = list(impls)
    for i in range(warmup):
        for name in names:
            impls[name](i)
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            impls[name](warmup + rep)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds: list[float], tokens: list[int]) -> dict[str, float]:
    """tokens/s per repetition -> median and spread (min, max, relative IQR)."""
    rates = sorted(t / s for t, s in zip(tokens, seconds))
    q = statistics.quantiles(rates, n=4) if len(rates) >= 2 else [rates[0]] * 3
    med = statistics.median(rates)
    return {"tokens_per_s": round(med, 1), "min": round(rates[0], 1), "max": round(rates[-1], 1),
            "iqr_pct": round(100 * (q[2] - q[0]) / med, 1), "reps": len(rates),
            "median_step_s": round(statistics.median(seconds), 4)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during the call, minus memory allocated before it",
    "cpu": ("peak resident set size (RSS, /proc/self/statm sampled every 0.5 ms by a thread) during "
            "the call, minus RSS just before it, after glibc malloc_trim(0); tracemalloc cannot see "
            "torch's allocator"),
}


def summarize_impls(times: dict, tokens_per_rep: list, peak) -> dict:
    """Stats per implementation (median, spread, `peak(name)` memory) and the ratio to
    transformers, the reference every table compares against."""
    impls = {}
    for name in times:
        stats = summarize(times[name], tokens_per_rep)
        stats["peak_mem_bytes"] = peak(name)
        impls[name] = stats
    ref = impls["transformers"]["tokens_per_s"]
    for stats in impls.values():
        stats["ratio_vs_transformers"] = round(stats["tokens_per_s"] / ref, 3)
    return impls


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes the call needs above what was already held (see MEMORY_METHOD)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _malloc_trim()
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_bytes()) - before


# --- machine and output ---------------------------------------------------------------------------

def machine(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu": _cpu_name(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(m: dict[str, Any]) -> str:
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    return f"{where}; torch {m['torch']}, transformers {m.get('transformers', '-')}, Python {m['python']}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_output_args(parser: Any, quick_help: Optional[str] = None) -> None:
    """--quick (a smoke run of seconds), --save and --out: results and the doc's tables are written
    only when asked, so a smoke or exploratory run never replaces the committed figures."""
    if quick_help:
        parser.add_argument("--quick", action="store_true", help=quick_help + "; never saved")
    parser.add_argument("--save", action="store_true",
                        help="write bench/results/NAME.{json,md} and refresh docs/performance.md")
    parser.add_argument("--out", default=None,
                        help="write NAME.json and NAME.md into this folder instead (docs untouched)")


def save_results(args: Any, name: str, payload: dict[str, Any], markdown: str,
                 doc_section: Optional[str] = None,
                 plot_fn: Optional[Callable[[], Any]] = None) -> bool:
    """Honour --out / --save (see add_output_args); a --quick run never touches bench/results."""
    if getattr(args, "out", None):
        js, md = write_results(name, payload, markdown, Path(args.out))
        print(f"wrote {js} and {md}")
        return True
    if getattr(args, "quick", False) or not args.save:
        why = "a --quick run is never saved" if getattr(args, "quick", False) else \
            "pass --save to write them, or --out DIR"
        print(f"bench/results/{name}.* left as they are ({why})")
        return False
    js, md = write_results(name, payload, markdown)
    if plot_fn is not None:
        plot_fn()
    if doc_section:
        update_doc(doc_section, markdown)
    print(f"wrote {js} and {md}")
    return True


def write_results(name: str, payload: dict[str, Any], markdown: str,
                  folder: Optional[Path] = None) -> tuple[Path, Path]:
    folder = RESULTS if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{name}.json", folder / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def update_doc(section: str, markdown: str, path: Path = PERF_DOC) -> None:
    """Replace the text between `<!-- section:start -->` and `<!-- section:end -->` in the doc."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_int(x: Optional[float]) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


def fmt_mib(nbytes: Optional[int]) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def plot(name: str, title: str, cases: list[str], series: dict[str, list[float]],
         ylabel: str = "tokens/s") -> Path:
    """Grouped bars: one group per case, one bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(cases))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
