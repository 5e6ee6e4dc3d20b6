"""Raw text -> BPE tokenizer -> zstd MDS shards of `input_ids` (run as `python -m data_prep`)."""

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")


class DataPrepError(Exception):
    """Bad user input: the CLI prints the message (which names the file) and exits non-zero."""
