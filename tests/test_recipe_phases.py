"""The three-phase recipe end to end on CPU, from the shipped tiny configs:

phase 1 (configs/tiny.yaml, 128 tokens) -> context extension (configs/tiny_context_extension.yaml,
512 tokens, global theta 160k) -> decay (configs/tiny_decay.yaml, 1 - sqrt). Each phase's final
checkpoint is published with `flexbert publish`, loaded by transformers, and its logits compared
with FlexBERT's; each phase's logged LR is checked against its schedule, computed here from the
recipe numbers (not with flexbert's scheduler code).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flexbert.cli import main as cli
from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main
from flexbert.io.publish import checkpoint_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
STEPS = {"p1": 6, "p2": 4, "p3": 5}


@pytest.fixture(scope="module")
def corpus(sample_corpus) -> Path:
    """The session-wide sample corpus from conftest (built once for every test module)."""
    return sample_corpus


def run(config: str, corpus: Path, folder: Path, steps: int, *extra: str) -> None:
    assert main([str(CONFIGS / config), f"data_dir={corpus}", f"save_folder={folder}",
                 f"max_duration={steps}ba", f"save_interval={steps}ba", "eval_interval=1000ba",
                 "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
                 "export.hf_folder=null", "trainer.console_log_interval=1000ba",
                 "trainer.progress_bar=false", *extra]) == 0


@pytest.fixture(scope="module")
def phases(corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phases")
    p1, p2, p3 = root / "p1", root / "p2", root / "p3"
    run("tiny.yaml", corpus, p1, STEPS["p1"])
    run("tiny_context_extension.yaml", corpus, p2, STEPS["p2"],
        f"load_path={p1 / 'latest-rank0.pt'}")
    run("tiny_decay.yaml", corpus, p3, STEPS["p3"], f"load_path={p2 / 'latest-rank0.pt'}",
        "callbacks.publish.every=2ba")
    return {"p1": p1, "p2": p2, "p3": p3}


def sample_batch(vocab: int, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 2, dtype=torch.long)  # pad id 2
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 0, 1  # [CLS] ... [SEP]
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("phase,seq", [("p1", 128), ("p2", 512), ("p3", 512)])
def test_published_phase_loads_in_transformers_with_equal_logits(phases, phase, seq, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    ckpt = phases[phase] / "latest-rank0.pt"
    out = tmp_path / "hf"
    assert cli(["publish", str(ckpt), str(out)]) == 0
    for name in ("config.json", "model.safetensors", "README.md", "tokenizer.json"):
        assert (out / name).is_file(), name
    hf = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(out)
    flex, info = checkpoint_model(ckpt)
    flex.config.sparse_prediction = False
    ids, mask = sample_batch(flex.config.vocab_size, [seq, 37, seq // 2 + 3])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = flex(ids, mask).logits[mask.bool()]
    diff = (got - want).abs().max().item()
    print(f"{phase}: max |logit diff| = {diff:.2e}")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    cfg = json.loads((out / "config.json").read_text())
    theta = 10000.0 if phase == "p1" else 160000.0
    # both forms, so transformers 4 (legacy keys) and 5 (rope_parameters) load the same thetas
    assert (cfg["global_rope_theta"], cfg["local_rope_theta"]) == (theta, 10000.0)
    rope = cfg["rope_parameters"]
    assert (rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"]) == (theta, 10000.0)
    assert tok.mask_token_id == cfg["mask_token_id"] == flex.config.mask_token_id
    card = (out / "README.md").read_text()
    name = {"p1": "flexbert-tiny", "p2": "context-extension", "p3": "decay"}[phase]
    assert f"| phase | {name} |" in card and f"| step (in this phase) | {STEPS[phase]} |" in card
    rows = read_metrics(str(phases[phase] / "metrics.jsonl"))
    assert f"| tokens seen (this phase) | {rows[-1]['tokens']:,} |" in card
    if phase == "p3":  # all phases' tokens, from the history carried through the checkpoints
        total = sum(read_metrics(str(phases[p] / "metrics.jsonl"))[-1]["tokens"] for p in phases)
        assert f"| tokens seen (all phases) | {total:,} |" in card
        assert [h["phase"] for h in info["history"]] == ["flexbert-tiny", "context-extension"]


def lr_trace(folder: Path) -> tuple[list[float], list[int]]:
    rows = read_metrics(str(folder / "metrics.jsonl"))
    return [r["lr"] for r in rows], [0] + [r["tokens"] for r in rows[:-1]]


def test_each_phase_logs_the_lr_of_its_schedule(phases):
    """Row k logs the LR after the scheduler stepped at the end of batch k, i.e. evaluated at the
    time before batch k (Composer steps schedulers before advancing the timestamp)."""
    lrs, before = lr_trace(phases["p1"])  # warmup_stable_decay: linear over 100k tokens, no decay
    assert len(lrs) == STEPS["p1"]
    assert lrs == pytest.approx([2e-3 * min(t / 100_000, 1.0) for t in before], rel=1e-6, abs=1e-12)
    lrs, _ = lr_trace(phases["p2"])  # constant 1e-3, no warmup: the restart overrode 2e-3
    assert lrs == pytest.approx([1e-3] * STEPS["p2"], rel=1e-6)
    lrs, _ = lr_trace(phases["p3"])  # 1 - sqrt over the whole phase to 0.001 x peak
    n = STEPS["p3"]
    want = [1e-3 * (0.001 + 0.999 * (1 - math.sqrt(k / n))) for k in range(n)]
    assert lrs == pytest.approx(want, rel=1e-6)


def test_extension_repacks_the_same_shards_at_512(phases):
    """Phase 1 rows hold at most 128 tokens, phase 2 rows 512, from the same data_dir: 8 rows of
    512 carry what 32 rows of 128 did (packing > 90%)."""
    p1 = read_metrics(str(phases["p1"] / "metrics.jsonl"))
    p2 = read_metrics(str(phases["p2"] / "metrics.jsonl"))
    assert p2[0]["tokens"] > 0.9 * 8 * 512 and p2[0]["data/packing_efficiency"] > 0.9
    assert p1[0]["tokens"] <= 32 * 128  # at most the tiny recipe's 32 rows of 128


def test_publish_callback_writes_every_n_and_at_the_end(phases, tmp_path):
    """tiny_decay.yaml publishes at the end (and here every 2 batches): folders for steps 2, 4, 5,
    and the last one holds the same weights `flexbert publish` writes from the final checkpoint."""
    published = phases["p3"] / "published"
    assert sorted(p.name for p in published.iterdir()) == ["decay-step2", "decay-step4",
                                                           "decay-step5"]
    assert cli(["publish", str(phases["p3"] / "latest-rank0.pt"), str(tmp_path / "cli")]) == 0
    a = load_file(str(published / "decay-step5" / "model.safetensors"))
    b = load_file(str(tmp_path / "cli" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (phases["p2"] / "published" / "context-extension-step4" / "config.json").is_file()


def test_average_of_checkpoints(phases, tmp_path):
    """`flexbert average` = the mean of the weights; the .pt output publishes like a checkpoint."""
    a, b = phases["p2"] / "latest-rank0.pt", phases["p3"] / "latest-rank0.pt"
    assert cli(["average", str(a), str(b), str(tmp_path / "avg.pt")]) == 0
    ma, _ = checkpoint_model(a)
    mb, _ = checkpoint_model(b)
    avg, info = checkpoint_model(tmp_path / "avg.pt")
    for (name, pa), pb, pm in zip(ma.named_parameters(), mb.parameters(), avg.parameters()):
        torch.testing.assert_close(pm, (pa + pb) / 2, rtol=0, atol=1e-7, msg=name)
    assert cli(["publish", str(tmp_path / "avg.pt"), str(tmp_path / "hf")]) == 0
    assert "average of" in (tmp_path / "hf" / "README.md").read_text()
    assert cli(["average", str(a), str(b), str(tmp_path / "avg_hf")]) == 0
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "avg_hf")
    torch.testing.assert_close(hf.model.embeddings.tok_embeddings.weight,
                               avg.model.embeddings.tok_embeddings.weight)


def test_rope_theta_change_on_loading_phase1(phases, corpus, tmp_path):
    """The phase-2 trainer built from configs/tiny_context_extension.yaml with phase 1's
    checkpoint: weights are phase 1's, global layers rotate with 160k, local layers with 10k
    (computed from the config), and the outputs are those of phase 1's model with only the global frequencies
    replaced."""
    from flexbert.model.attention.rotary import inverse_frequencies
    from flexbert.train.builder import build_trainer
    from flexbert.train.recipe.load import load_recipe

    recipe = load_recipe(CONFIGS / "tiny_context_extension.yaml", [
        f"data_dir={corpus}", f"save_folder={tmp_path}", "trainer.precision=fp32",
        f"load_path={phases['p1'] / 'latest-rank0.pt'}", "callbacks.publish.enabled=false"])
    trainer = build_trainer(recipe)
    new = trainer.state.model.model.eval()
    old, _ = checkpoint_model(phases["p1"] / "latest-rank0.pt")
    trainer.close()
    head_dim = new.config.head_dim
    assert torch.equal(new.model.position.inv_freq_global, inverse_frequencies(head_dim, 160000.0))
    assert torch.equal(new.model.position.inv_freq_local, inverse_frequencies(head_dim, 10000.0))
    assert torch.equal(new.model.position.inv_freq_local, old.model.position.inv_freq_local)
    assert not torch.equal(new.model.position.inv_freq_global, old.model.position.inv_freq_global)
    for key, value in old.state_dict().items():
        assert torch.equal(new.state_dict()[key], value) or "inv_freq" in key, key

    pos = torch.arange(300)[None]
    q = k = torch.randn(1, 300, new.config.attention.num_heads, head_dim)
    new_cache, old_cache = new.model.position.prepare(pos), old.model.position.prepare(pos)
    for is_global in (False, True):
        same = torch.equal(new.model.position.rotate(q, k, new_cache, is_global)[0],
                           old.model.position.rotate(q, k, old_cache, is_global)[0])
        assert same == (not is_global)

    new.config.sparse_prediction = old.config.sparse_prediction = False
    ids, mask = sample_batch(new.config.vocab_size, [300, 40])
    with torch.no_grad():
        got = new(ids, mask).logits[mask.bool()]
        assert (got - old(ids, mask).logits[mask.bool()]).abs().max() > 1e-6  # near-uniform attention: small, but real
        old.model.position.global_theta = 160000.0
        torch.testing.assert_close(got, old(ids, mask).logits[mask.bool()], rtol=0, atol=0)
        # Local layers too at 160k would change the outputs (little: they see 8 tokens each side).
        old.model.position.local_theta = 160000.0
        assert (got - old(ids, mask).logits[mask.bool()]).abs().max() > 1e-6


class FakeHub:
    """The Hub HTTP endpoints `HfApi.create_repo`, `create_branch` and `upload_folder` call (repos/
    create, branch, validate-yaml, preupload, commit), on 127.0.0.1: every file is declared 'regular' at preupload, so the commit carries them
    inline (base64 in the NDJSON payload) and no LFS / xet storage is involved."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self
        self.repos: set[str] = set()
        self.branches: set[tuple[str, str]] = set()
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.calls: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                import base64
                from urllib.parse import unquote

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = unquote(self.path.split("?")[0])
                hub.calls.append(path)
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") \
                        else req["name"]
                    hub.repos.add(repo)
                    return self.reply({"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the model card's front matter
                    return self.reply({"errors": [], "warnings": []})
                parts = path.split("/")  # /api/models/<org>/<name>/<action>/<revision>
                if len(parts) < 7 or parts[:3] != ["", "api", "models"]:
                    return self.reply({"error": f"not faked: POST {path}"}, 404)
                repo, action, rev = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
                if repo not in hub.repos:
                    return self.reply({"error": "Repository not found"}, 404)
                if action == "branch":
                    hub.branches.add((repo, rev))
                    return self.reply({})
                if (repo, rev) not in hub.branches and rev != "main":
                    return self.reply({"error": f"Revision not found: {rev}"}, 404)
                if action == "preupload":
                    return self.reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                                  "shouldIgnore": False}
                                                 for f in json.loads(body)["files"]]})
                if action == "commit":
                    store = hub.files.setdefault((repo, rev), {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            store[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            return self.reply({"error": f"unsupported {item['key']}"}, 400)
                    return self.reply({"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}",
                                       "commitOid": "0" * 40, "pullRequestUrl": None})
                self.reply({"error": "not faked"}, 404)

            def reply(self, obj, code=200):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    # What HF_ENDPOINT / HF_HUB_OFFLINE=0 would give a fresh process (constants are read at import).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub < 1.0 pools requests sessions, 1.x one httpx client: drop it either way.
    reset = getattr(_http, "reset_sessions", None) or _http.close_session
    reset()
    yield hub
    hub.server.shutdown()
    reset()


def test_publish_uploads_to_a_hub_branch(phases, fake_hub, tmp_path):
    """`flexbert publish --repo-id --revision` against a local Hub endpoint (HF_ENDPOINT): the
    repository and the branch are created and every file of the folder lands on that branch."""
    out = tmp_path / "hf"
    assert cli(["publish", str(phases["p2"] / "latest-rank0.pt"), str(out), "--repo-id",
                "me/flexbert-tiny", "--revision", "{phase}-step{step}"]) == 0
    branch = ("me/flexbert-tiny", "context-extension-step4")
    assert branch in fake_hub.branches
    uploaded = fake_hub.files[branch]
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= uploaded.keys()
    assert uploaded == local
    assert "revision='context-extension-step4'" in uploaded["README.md"].decode()
