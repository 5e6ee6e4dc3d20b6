"""Train and load ModernBERT-style byte-level BPE tokenizers in Hugging Face format."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from data_prep import SPECIAL_TOKENS, DataPrepError

VOCAB_MULTIPLE = 64


def _roles() -> dict[str, str]:
    """Special token per transformers role, so `tokenizer.cls_token_id` etc. resolve after loading."""
    return {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "mask_token": "[MASK]", "unk_token": "[UNK]"}


def check_vocab_size(vocab_size: int) -> None:
    """Tensor-core friendly embedding tables need a multiple of 64; refuse anything else early."""
    if vocab_size <= len(SPECIAL_TOKENS) + 256 or vocab_size % VOCAB_MULTIPLE:
        raise DataPrepError(
            f"--vocab-size {vocab_size}: must be a multiple of {VOCAB_MULTIPLE} and larger than "
            f"{len(SPECIAL_TOKENS) + 256} (special tokens + byte alphabet)")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | os.PathLike,
                    after_training: Optional[Callable[[], None]] = None) -> "object":
    """Train byte-level BPE and save it so `AutoTokenizer.from_pretrained(out)` works.

    The raw BPE vocabulary can come out short on small corpora; it is padded with unused
    special tokens so the saved vocabulary is exactly `vocab_size` (a multiple of 64).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if after_training is not None:  # e.g. refuse empty input before anything is written
        after_training()
    _pad_vocab(tok, vocab_size)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=8192, **_roles())
    save_tokenizer(fast, out)
    return fast


MODEL_INPUTS = ["input_ids", "attention_mask"]


def save_tokenizer(tok, out: str | os.PathLike) -> None:
    """`save_pretrained`, readable by transformers 4 and 5 alike: 5 names the class
    `TokenizersBackend`, which 4 cannot import; both load `PreTrainedTokenizerFast` folders."""
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        tok.save_pretrained(str(out))
    except Exception as exc:  # the Rust tokenizers library reports I/O errors as bare Exceptions
        code = re.search(r"os error (\d+)", str(exc))
        if isinstance(exc, OSError) or not code:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(out)) from exc
    path = Path(out) / "tokenizer_config.json"
    conf = json.loads(path.read_text()) if path.is_file() else {}
    before = dict(conf)
    if conf.get("tokenizer_class") == "TokenizersBackend":
        conf["tokenizer_class"] = "PreTrainedTokenizerFast"
        conf.pop("backend", None)
    # ModernBERT takes no token_type_ids: `model(**tokenizer(text))` (and sentence-transformers)
    # would pass them and fail.
    conf["model_input_names"] = MODEL_INPUTS
    if conf != before:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)


def _pad_vocab(tok, vocab_size: int) -> None:
    """Fill the vocabulary up to `vocab_size` with never-produced special tokens."""
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"[UNUSED{i}]" for i in range(missing)])


def open_tokenizer(name_or_dir: str):
    """The one place FlexBERT opens a tokenizer (folder or Hub name): never with the folder's own
    code (`trust_remote_code=False`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_dir), trust_remote_code=False)


def load_tokenizer(name_or_dir: str):
    """Load a tokenizer from a local directory or the Hub and check the MLM special tokens exist."""
    if not Path(name_or_dir).exists() and (name_or_dir.startswith((".", "/")) or os.sep in name_or_dir
                                           and not _looks_like_hub_id(name_or_dir)):
        raise DataPrepError(f"tokenizer {name_or_dir}: no such directory")
    problem = custom_code_problem(name_or_dir)
    if problem:
        raise DataPrepError(problem)
    try:
        tok = open_tokenizer(name_or_dir)
    except Exception as exc:  # transformers raises many types; the user needs the path + cause
        raise DataPrepError(f"tokenizer {name_or_dir}: cannot load ({exc})") from exc
    check_special_tokens(tok, name_or_dir)
    return tok


def custom_code_problem(folder: str) -> Optional[str]:
    """'file: key: why' when a local tokenizer or model folder asks transformers to import its
    own Python code (an `auto_map`, or a `tokenizer_class` transformers does not provide);
    None otherwise. Loads also pass trust_remote_code=False, which covers Hub names; this names
    the file and the key instead of transformers' prompt or error."""
    for name in ("tokenizer_config.json", "config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{path}: not a readable JSON file ({exc})"
        if not isinstance(tree, dict):
            return f"{path}: expected a JSON object, got {type(tree).__name__}"
        if tree.get("auto_map"):
            return (f"{path}: auto_map: the folder asks to import its own Python code "
                    f"({json.dumps(tree['auto_map'])[:120]}); FlexBERT never runs code from a "
                    "model or tokenizer folder: remove auto_map and use a class transformers "
                    "provides")
        cls = tree.get("tokenizer_class") if name == "tokenizer_config.json" else None
        if cls is not None and not _known_tokenizer_class(cls):
            return (f"{path}: tokenizer_class: {cls!r} is not a tokenizer class transformers "
                    "provides (custom code is never run); use e.g. PreTrainedTokenizerFast")
    return None


def _known_tokenizer_class(name: object) -> bool:
    """transformers' own lookup, which only searches its built-in tokenizers here (no auto_map)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not isinstance(name, str):
        return False
    return any(tokenizer_class_from_name(n) is not None
               for n in (name, name[:-4] if name.endswith("Fast") else name + "Fast"))


def _looks_like_hub_id(name: str) -> bool:
    """Hub ids are `owner/name`: exactly one slash and no path prefix."""
    return name.count("/") == 1 and not name.startswith(("/", "."))


def check_special_tokens(tok, where: str) -> None:
    """MLM needs a mask token and CLS/SEP to frame documents; missing ones are a hard error."""
    for role in ("mask_token", "cls_token", "sep_token", "pad_token"):
        if getattr(tok, f"{role}_id", None) is None:
            label = "[MASK]" if role == "mask_token" else role
            raise DataPrepError(f"tokenizer {where}: has no {label} token ({role} is not set)")


def special_ids(tok) -> dict[str, int]:
    """The ids the loader needs, in a plain dict that pickles into worker processes."""
    return {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id,
            "mask": tok.mask_token_id, "unk": tok.unk_token_id if tok.unk_token_id is not None else -1,
            "vocab_size": len(tok), "all_special": sorted(_all_special_ids(tok))}


def _all_special_ids(tok) -> set[int]:
    """Every special or added token: none of these may be masked or drawn as a random replacement."""
    ids = set(tok.all_special_ids)
    ids.update(getattr(tok, "added_tokens_decoder", {}).keys())
    return {int(i) for i in ids if i is not None}


def iter_texts_for_training(docs: Iterator[str], counter: Optional[list] = None) -> Iterator[str]:
    """Hand tokenizer training non-empty documents only, long ones in segments cut at whitespace
    (BPE training counts words, so the cuts change nothing but the memory the trainer needs).
    `counter[0]` counts the documents handed over."""
    from data_prep.sources import segments

    for text in docs:
        if text.strip():
            if counter is not None:
                counter[0] += 1
            yield from segments(text)


def build_tokenizer(sources: list[str], source_opts, vocab_size: int, out: str,
                    overwrite: bool = False):
    """`python -m data_prep tokenizer`: refuse an unsafe or occupied output and empty input;
    the tokenizer is trained first and written only when there was text to train on."""
    from data_prep.outputs import check_output, disk_error
    from data_prep.sources import iter_documents

    check_vocab_size(vocab_size)
    check_output(out, sources, overwrite)
    counter = [0]
    texts = iter_texts_for_training(iter_documents(sources, source_opts), counter)
    try:
        return train_tokenizer(texts, vocab_size, out, lambda: _require_text(counter, sources))
    except OSError as exc:
        raise disk_error(exc, out) from exc


def _require_text(counter: list, sources: list[str]) -> None:
    if not counter[0]:
        raise DataPrepError(f"{', '.join(sources)}: no non-empty documents to train a tokenizer on")
