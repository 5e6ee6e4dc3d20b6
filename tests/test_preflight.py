"""train.py's pre-flight: bad recipe values, missing data and a tokenizer that disagrees with the
model exit 2 with one `FILE: KEY: what` line, before anything is built or written."""

from pathlib import Path

import pytest

from flexbert.train.main import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = str(CONFIGS / "tiny.yaml")


def run_main(capsys, tmp_path, *overrides):
    """train.py in-process with a save_folder under tmp_path; returns (rc, stderr)."""
    rc = main([TINY, f"save_folder={tmp_path}/run", *overrides])
    err = capsys.readouterr().err.strip()
    assert not (tmp_path / "run").exists(), "pre-flight must fail before anything is written"
    return rc, err


@pytest.mark.parametrize("override,expected", [
    ("trainer.precision=fp64", "trainer.precision: 'fp64'; allowed: fp32, amp_fp16, amp_bf16"),
    ("trainer.device_train_microbatch_size=0", "trainer.device_train_microbatch_size: 0 must be an integer >= 1"),
    ("trainer.device_train_microbatch_size=abc", "trainer.device_train_microbatch_size: 'abc' must be"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas[1]: 1.5 must be a number in [0.0, 1.0)"),
    ("optimizer.betas=[0.9]", "optimizer.betas: needs two values"),
    ("optimizer.eps=0", "optimizer.eps: 0.0 must be a number in (0.0, inf)"),
    ("optimizer.eps=nan", "optimizer.eps: nan must be"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay: -1.0 must be a number in [0.0, inf)"),
    ("batch.global_train_batch_size=0", "batch.global_train_batch_size: 0 must be >= 1"),
    ("batch.global_train_batch_size=-4", "batch.global_train_batch_size: -4 must be >= 1"),
    ("save_interval=0ba", "save_interval: '0ba' must be > 0 (the last step is always saved"),
    ("max_duration=0tok", "max_duration: '0tok' must be > 0"),
])
def test_bad_recipe_values_exit_2_naming_the_key(capsys, tmp_path, override, expected):
    rc, err = run_main(capsys, tmp_path, override)
    assert rc == 2
    assert err == f"error: {TINY}: {expected}" or err.startswith(f"error: {TINY}: {expected}")
    assert len(err.splitlines()) == 1


def test_missing_data_dir_names_data_dir_and_the_prepare_command(capsys, tmp_path):
    rc, err = run_main(capsys, tmp_path, "data_dir=/nonexistent")
    assert rc == 2
    assert err.startswith(f"error: {TINY}: data_dir: /nonexistent does not exist")
    assert "python -m data_prep sample --out /nonexistent" in err and "data.tokenizer" not in err


def test_empty_data_dir_is_not_prepared_data(capsys, tmp_path):
    empty = tmp_path / "sampel"
    empty.mkdir()
    rc, err = run_main(capsys, tmp_path, f"data_dir={empty}")
    assert rc == 2
    assert f"data_dir: {empty} holds no prepared data" in err
    assert f"python -m data_prep sample --out {empty}" in err


def test_tokenizer_larger_than_the_model_vocabulary(capsys, tmp_path, data_corpus):
    mds, _ = data_corpus  # its tokenizer has 512 tokens
    rc, err = run_main(capsys, tmp_path, f"data_dir={mds}", "model.vocab_size=256")
    assert rc == 2
    assert "model.vocab_size: 256 is smaller than the tokenizer's 512 tokens" in err


@pytest.mark.parametrize("role,token_id,tokenizer_id", [("pad", 5, 2), ("mask", 2, 3),
                                                         ("cls", 1, 0), ("sep", 0, 1)])
def test_special_ids_must_match_the_tokenizer(capsys, tmp_path, data_corpus, role, token_id,
                                              tokenizer_id):
    mds, _ = data_corpus
    rc, err = run_main(capsys, tmp_path, f"data_dir={mds}", f"model.{role}_token_id={token_id}")
    assert rc == 2
    assert (f"model.{role}_token_id: {token_id}, but the tokenizer {mds}/tokenizer has "
            f"{role} = {tokenizer_id}; set model.{role}_token_id={tokenizer_id}") in err


def test_missing_tokenizer_names_the_key(capsys, tmp_path, data_corpus):
    mds, _ = data_corpus
    rc, err = run_main(capsys, tmp_path, f"data_dir={mds}", "data.tokenizer=/nowhere/tok")
    assert rc == 2
    assert "data.tokenizer: tokenizer /nowhere/tok: no such directory" in err


def test_absolute_positions_shorter_than_the_sequence(capsys, tmp_path):
    rc, err = run_main(capsys, tmp_path, "model.position.type=absolute",
                       "model.max_position_embeddings=64")
    assert rc == 2
    assert ("model.max_position_embeddings: 64 absolute positions but data.max_seq_len is 128"
            in err)


def test_prepared_data_passes_and_reports_its_val_split(data_corpus):
    from flexbert.train.recipe.load import load_recipe
    from flexbert.train.recipe.preflight import check_data, has_val_split

    recipe = load_recipe(TINY, [f"data_dir={data_corpus[0]}"])
    check_data(recipe)  # raises on any problem
    assert has_val_split(recipe)
