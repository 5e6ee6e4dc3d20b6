"""Small generated downstream tasks for trying `flexbert finetune` / `flexbert eval` offline:
`banana` (classification: label 1 iff the sentence holds "banana"), `ner` (CoNLL token
classification: PER names, two-word `new <place>` LOC) and `code` (BEIR retrieval over Python
standard-library functions). The tests use the same writers."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

WORDS = ("the a of to and in is it for on with as was at by from this that be are or an not def "
         "class return import self print value list dict name file path data error none true "
         "false while yield lambda").split()
PEOPLE, PLACES = ("alice", "bob", "carol", "dave"), ("paris", "berlin", "tokyo", "lima")


def write_classification(folder: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """Label 1 iff the sentence contains `banana`."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            if i % 2:
                words.insert(rng.randrange(len(words) + 1), "banana")
            rows.append(json.dumps({"text": " ".join(words), "label": i % 2}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def write_token_task(folder: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """People are PER, `new <place>` is a two-word LOC; everything else O (CoNLL format)."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = []
        for _ in range(n):
            for _ in range(rng.randint(3, 8)):
                r = rng.random()
                if r < 0.15:
                    lines.append(f"{rng.choice(PEOPLE)} B-PER")
                elif r < 0.25:
                    lines += ["new B-LOC", f"{rng.choice(PLACES)} I-LOC"]
                else:
                    lines.append(f"{rng.choice(WORDS)} O")
            lines.append("")
        (folder / f"{split}.conll").write_text("\n".join(lines) + "\n")
    return folder


def write_beir(folder: Path, n_docs: int = 48) -> Path:
    """Code search over Python stdlib functions: a query is five identifiers of its function
    (different identifiers for training and test queries where the function has enough)."""
    from data_prep.sample import stdlib_documents

    docs = [d for d in stdlib_documents(400_000) if 300 < len(d) < 1500][:n_docs]
    rng = random.Random(2)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for i, doc in enumerate(docs):
        corpus.append({"_id": f"d{i}", "title": "", "text": doc})
        names = sorted(set(re.findall(r"\b[a-z_][a-z_]{3,}\b", doc)))
        rng.shuffle(names)
        for split, part in (("train", names[:5]), ("test", names[5:10] or names[:5])):
            queries.append({"_id": f"{split}{i}", "text": " ".join(part)})
            qrels[split].append(f"{split}{i}\td{i}\t1")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


def write_example_tasks(out: Path, n_train: int = 320, n_dev: int = 160, n_docs: int = 48) -> list[Path]:
    """out/banana, out/ner and out/code: the three task kinds `flexbert eval` reads."""
    out = Path(out)
    return [write_classification(out / "banana", n_train, n_dev),
            write_token_task(out / "ner", n_train, n_dev), write_beir(out / "code", n_docs)]
