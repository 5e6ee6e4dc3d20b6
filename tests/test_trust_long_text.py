"""Issue 22, point 5: a text stream's document is tokenized in bounded segments, so one 20 MB
document does not hold the whole text in the tokenizer (7.2 GB peak before). The tokenization
runs in a subprocess under an address-space limit (RLIMIT_AS) and reports its peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from flexbert.data.documents import tokenize_text

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 1500

CHILD = r"""
import json, resource, sys
from tokenizers import Tokenizer
from flexbert.data.documents import tokenize_text
tok = Tokenizer.from_file(sys.argv[1])
words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
text = " ".join(words[i % 8] + str(i % 97) for i in range(2_600_000))[:20_000_000]
tokenize_text(tok, "warm up")
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = (vm << 10) + (int(sys.argv[2]) << 20)  # what is mapped now, plus the allowance
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = tokenize_text(tok, text)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"chars": len(text), "tokens": int(len(ids)), "before_mb": before // 1024,
                  "peak_mb": after // 1024}))
"""


def test_20mb_document_tokenizes_in_bounded_memory(sample_corpus):
    env = {"PYTHONPATH": str(REPO), "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD,
                           str(sample_corpus / "tokenizer" / "tokenizer.json"), str(LIMIT_MB)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["chars"] == 20_000_000 and result["tokens"] > 2_000_000
    assert result["peak_mb"] - result["before_mb"] < 600, result


def test_segments_give_the_same_ids_as_the_whole_text(sample_corpus):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(sample_corpus / "tokenizer" / "tokenizer.json"))
    text = " ".join(f"word{i % 50} line\nnext" for i in range(60_000))  # > 2 segments
    whole = np.asarray(tok.encode(text, add_special_tokens=False).ids)
    assert len(text) > 2 * (1 << 18)
    assert np.array_equal(tokenize_text(tok, text), whole)
