"""The GPU configuration (kernel flex, padding unpadded, compiled) compiles a bounded number of graphs.

Every training batch brings new token, document and masked-token counts. Run through Composer's
own `compile_config` path with a backend that counts dynamo's graphs and traces them with
`aot_eager` (no C++ codegen, so it runs on CPU), 12 steps from the real packed loader must compile
at most 3 graphs with no graph break, and the standalone compiled FlexAttention must not compile a
graph per shape (on a GPU that ends at dynamo's recompile limit, then eager FlexAttention).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_documents, write_jsonl
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from flexbert.data import DataConfig, StreamConfig, build_data_spec, build_pretraining_dataloader
from flexbert.model.attention.kernels import compiled_flex, flex_cpu_backward
from flexbert.model import FlexBertForMaskedLM
from flexbert.model.compile import compile_options, scope_compiled_forward, without_duck_shapes
from flexbert.model.attention.layout import describe_batch
from helpers import tiny_config

STEPS, ROWS, SEQ = 12, 4, 128


class GraphCounter:
    """A dynamo backend: counts the graphs it is handed, runs them with aot_eager."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return lookup_backend("aot_eager")(gm, example_inputs)


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory, data_tokenizer):
    """Documents of 2-40 words, so rows hold a varying number of them; rows per batch grow from 1
    to 4 over the first steps (batch-size warmup, as the recipes do), so the token count crosses
    FlexAttention's 128-token blocks."""
    from data_prep.mds import MdsOptions, build_mds

    root = tmp_path_factory.mktemp("short_docs")
    src = write_jsonl(root / "docs.jsonl", make_documents(400, seed=5, min_words=2, max_words=40))
    build_mds([str(src)], MdsOptions(tokenizer=str(data_tokenizer), out=str(root / "mds"),
                                     max_doc_tokens=512, val_fraction=0.1, progress=False,
                                     shard_size=1 << 16))
    return DataConfig(streams={"main": StreamConfig(local=str(root / "mds"))}, max_seq_len=SEQ,
                      num_workers=0, mlm_probability=0.3, batch_warmup_min_rows=1,
                      batch_warmup_tokens=2000)


def _model():
    cfg = tiny_config(**{"attention.kernel": "flex", "padding": "unpadded",
                         "sparse_prediction": True, "vocab_size": 512, "num_layers": 2})
    torch.manual_seed(0)
    return FlexBertForMaskedLM(cfg)


@pytest.mark.skipif(not flex_cpu_backward(), reason="this torch has no FlexAttention backward on CPU")
def test_training_steps_from_the_loader_compile_at_most_three_graphs(short_docs):
    from composer import Trainer

    from flexbert.runtime.composer_model import ComposerFlexBertMLM

    shapes = set()
    for i, b in enumerate(build_pretraining_dataloader(short_docs, device_batch_size=ROWS)):
        if i == STEPS:
            break
        shapes.add((b["input_ids"].shape[0], int(b["attention_mask"].sum()),
                    b["cu_seqlens"].numel(), b["prediction_indices"].numel()))
    rows, tokens, docs, masked = (set(x) for x in zip(*shapes))
    assert len(rows) > 2 and len(tokens) > 6 and len(docs) > 2 and len(masked) > 6
    assert len({-(-t // 128) for t in tokens}) > 2  # several FlexAttention block counts

    torch._dynamo.reset()
    counters.clear()
    counter = GraphCounter()
    model = ComposerFlexBertMLM(_model())
    trainer = Trainer(model=model, device="cpu", max_duration=f"{STEPS}ba", progress_bar=False,
                      train_dataloader=build_data_spec(
                          build_pretraining_dataloader(short_docs, device_batch_size=ROWS)),
                      optimizers=torch.optim.AdamW(model.parameters(), lr=1e-3),
                      compile_config={**compile_options(), "backend": counter}, loggers=[],
                      device_train_microbatch_size=ROWS)
    scope_compiled_forward(trainer.state.model)  # as build_trainer does
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == STEPS
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert 1 <= counter.graphs <= 3  # 1 here; 36 with static shapes (docs/performance.md)


def test_standalone_compiled_flex_does_not_compile_per_shape():
    torch._dynamo.reset()
    counter = GraphCounter()
    attend = compiled_flex(backend=counter)
    gen = torch.Generator().manual_seed(0)
    from flexbert.model.attention.kernels import _block_mask

    graphs = []
    for tokens in range(150, 150 + 40 * STEPS, 40):  # 12 token counts, 2 to 5 flex blocks
        cu = torch.cat([torch.tensor([0]), torch.randint(1, tokens, (3,), generator=gen).sort()[0],
                        torch.tensor([tokens])]).unique().int()
        layout = describe_batch(torch.zeros(tokens, dtype=torch.long), cu_seqlens=cu)
        q = torch.randn(1, 4, tokens, 8, generator=gen)
        for window in (None, 16):
            attend(q, q, q, block_mask=_block_mask(layout, window))
        graphs.append(counter.graphs)
    assert graphs[-1] <= 2  # one per window kind: far from the recompile limit (8)


def test_trainer_compile_uses_the_dynamic_options():
    from flexbert.train.builder import gpu_only
    from flexbert.train.recipe.schema import TrainerConfig

    import torch.fx.experimental._config as fx_config

    before = fx_config.use_duck_shape
    kwargs = gpu_only(TrainerConfig(compile=True, compile_on_cpu=True), "cpu")
    assert kwargs["compile_config"] == compile_options() == {"dynamic": True}
    assert fx_config.use_duck_shape is before is True  # no process-wide side effect
    seen = []
    scoped = without_duck_shapes(lambda: seen.append(fx_config.use_duck_shape))
    scoped()
    assert seen == [False] and fx_config.use_duck_shape is True
