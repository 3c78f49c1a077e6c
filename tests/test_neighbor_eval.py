"""`inspect --neighbors --eval N` on a model trained for real: the pool's FFN outputs are each
position's own (checked by running its context alone), the chunked search equals a brute-force one,
the longest-suffix baseline equals a brute-force n-gram search, KL and Hellinger match textbook
values, the model's distribution is GPT.forward's, and the cache is reused only while the
checkpoint and the text stay the same."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptkit import checkpoint
from gptkit.introspect.neighbor_eval import (
    context_range,
    eval_texts,
    ffn_pool,
    follower_counts,
    longest_suffix,
    metrics,
    nearest,
    queries,
)
from gptkit.introspect.trace import run_blocks
from tests.conftest import assert_one_line_error, run_here, torch_threads


@pytest.fixture(scope="module")
def loaded(trained_run):
    info = checkpoint.read_info(checkpoint.resolve(trained_run["run_dir"]))
    model, tok, _ = checkpoint.load_for_inference(trained_run["run_dir"])
    return model.float().eval(), tok, info


def test_each_pool_vector_is_its_positions_ffn_output_with_half_to_a_whole_block_of_context(loaded):
    model, tok, info = loaded
    W = model.config.block_size  # 64: contexts of 33 to 64 tokens
    lo, hi = context_range(W)
    ids = torch.tensor(tok.encode(eval_texts(info, None).train.read(1000)[0]))
    with torch_threads(1):
        pool = ffn_pool(model, ids, batch_tokens=256)  # (n_layer, n, C), several batches
    assert pool.shape == (model.config.n_layer, ids.numel() - 1, model.config.n_embd)
    keep = lo - 1
    S = W - keep
    for p in (0, 5, W - 1, W, W + 7, 95, 96, 500, ids.numel() - 2):
        # the windows overlap by half: p has its whole prefix in the first one, else lo..hi tokens
        c = p + 1 if p < W else p - S * ((p - keep) // S) + 1
        assert p < W or lo <= c <= hi
        with torch.no_grad():  # the context alone, through the blocks
            ms = [F.normalize(m[0, -1], dim=-1) for _, m, _, _ in run_blocks(model, ids[None, p - c + 1:p + 1])]
        assert all(float(pool[i, p].float() @ m) > 0.9995 for i, m in enumerate(ms)), p


def test_the_chunked_search_is_the_brute_force_one():
    g = torch.Generator().manual_seed(0)
    pool = F.normalize(torch.randn(2, 40_000, 16, generator=g), dim=-1).half()
    q = F.normalize(torch.randn(2, 30, 16, generator=g), dim=-1)
    got = nearest(pool, q, 7)  # three chunks of 16,384 rows
    for layer in range(2):
        want = (q[layer] @ pool[layer].float().T).topk(7, dim=1).indices
        assert torch.equal(got[layer], want)


def test_longest_suffix_is_the_brute_force_n_gram_match():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, 3000)  # a small alphabet: long matches
    by_token = np.argsort(ids[:-1], kind="stable")
    starts = np.searchsorted(ids[:-1][by_token], np.arange(5))
    for _ in range(40):
        context = rng.integers(0, 4, rng.integers(1, 12))
        followers, m = longest_suffix(ids, by_token, starts, context)
        best, where = 0, []
        for e in range(len(ids) - 1):  # every position, every length: the textbook search
            n = 0
            while n < len(context) and n <= e and ids[e - n] == context[-1 - n]:
                n += 1
            if n > best:
                best, where = n, [e]
            elif n == best and n > 0:
                where.append(e)
        assert m == best
        assert sorted(followers.tolist()) == sorted(ids[np.array(where) + 1].tolist())


def test_kl_and_hellinger_are_the_textbook_values():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    p = torch.tensor([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5]])
    m = metrics(q, q, p.log(), torch.tensor([0, 2]))
    assert m["kl"].tolist() == pytest.approx([math.log(2), 0.0], abs=1e-6)  # 0.5 ln 2 + 0.5 ln 2; identical
    assert m["hellinger"].tolist() == pytest.approx([math.sqrt(1 - 2 * math.sqrt(0.125)), 0.0], abs=1e-3)
    assert m["top1_agree"].tolist() == [0.0, 1.0] and m["top1_actual"].tolist() == [1.0, 1.0]


def test_follower_ties_go_to_the_nearer_neighbours():
    # one block, k = 4: tokens 3 and 5 both twice; 5 is the nearest neighbour's, so 5 wins
    q, argmax_of = follower_counts(torch.tensor([[5, 3, 3, 5], [3, 5, 5, 3]]), 8, 4)
    assert q[0].tolist() == [0, 0, 0, 0.5, 0, 0.5, 0, 0] and argmax_of.argmax(-1).tolist() == [5, 3]
    # two blocks of 4: 7 is the most frequent; then 2 and 6 tie (twice each), both nearest in a block,
    # and block 0's nearest goes first
    q, argmax_of = follower_counts(torch.tensor([[6, 7, 7, 7, 2, 6, 2, 1]]), 8, 4)
    assert int(argmax_of.argmax()) == 7 and q[0, 7] == pytest.approx(3 / 8)
    q, argmax_of = follower_counts(torch.tensor([[6, 7, 2, 1, 2, 0, 6, 3]]), 8, 4)
    assert int(argmax_of.argmax()) == 6


def test_queries_are_the_models_own_predictions(loaded):
    model, tok, info = loaded
    held = np.asarray(tok.encode(eval_texts(info, None).held_out.read(20_000)[0]))
    Q = queries(model, held, 50, seed=3)
    lo, hi = context_range(model.config.block_size)
    assert len(set(Q["positions"].tolist())) == 50 and Q["lengths"].min() >= lo and Q["lengths"].max() <= hi
    assert (Q["actual"].numpy() == held[Q["positions"] + 1]).all()
    with torch.no_grad():
        for i in (0, 17, 49):
            ctx = torch.from_numpy(Q["contexts"][i].astype(np.int64))[None]
            want = torch.log_softmax(model(ctx)[0][0, -1], -1)  # GPT.forward, not the hand-run blocks
            assert torch.allclose(Q["logp"][i], want, atol=1e-4)
    again = queries(model, held, 50, seed=3)
    assert (again["positions"] == Q["positions"]).all()  # the seed decides the draw


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The shared run copied, so the cache written into its folder stays in this test's."""
    store = tmp_path / "store"
    shutil.copytree(trained_run["run_dir"], store / "run")
    return store


def test_eval_on_a_trained_model_and_its_cache_read_back(run_copy, capsys):
    """The table's claims on a real model, and a second run from the cache with the same numbers."""
    args = ("inspect", "run", "--checkpoints", str(run_copy), "--neighbors", "--eval", "200", "--max-positions",
            "20000", "--n-neighbors", "10", "--json")
    with torch_threads(1):
        first, second = run_here(capsys, *args), run_here(capsys, *args)
    assert first.returncode == 0, first.stderr
    ev = json.loads(first.stdout)["eval"]
    rows = {r["name"]: r for r in ev["rows"]}
    L = len([r for r in ev["rows"] if r["kind"] == "block"])
    assert list(rows) == [f"block {i}" for i in range(L)] + ["all blocks", "unigram", "longest suffix"]
    assert ev["positions"] == 200 and ev["pool_positions"] == 20_000 and ev["cache"]["built"]
    for r in ev["rows"]:
        assert 0 <= r["top1_agree"] <= 1 and r["kl"] >= 0 and 0 <= r["hellinger"] <= 1
    # the method's claim on this model: the neighbours' followers agree with the model far more often
    # than the unigram distribution's top token does, and are closer to its distribution
    assert rows["all blocks"]["top1_agree"] > rows["unigram"]["top1_agree"] + 0.1
    assert rows["all blocks"]["hellinger"] < rows["unigram"]["hellinger"]
    ev2 = json.loads(second.stdout)["eval"]
    assert not ev2["cache"]["built"] and ev2["rows"] == ev["rows"]  # read back: the same numbers


def test_the_cache_is_rebuilt_when_the_checkpoint_or_the_text_changes(loaded, run_copy):
    from gptkit.introspect.neighbor_eval import cache_path, load_or_build_pool

    model, tok, _ = loaded
    info = checkpoint.read_info(checkpoint.resolve(run_copy / "run"))
    ids = torch.tensor(tok.encode(eval_texts(info, None).train.read(3000)[0]))
    with torch_threads(1):
        built = [load_or_build_pool(model, info, ids, "a" * 64)[1]["built"]]
        built.append(load_or_build_pool(model, info, ids, "a" * 64)[1]["built"])  # the same: read back
        built.append(load_or_build_pool(model, info, ids, "b" * 64)[1]["built"])  # another text
        built.append(load_or_build_pool(model, info, ids[:2000], "b" * 64)[1]["built"])  # fewer positions
        st = info.path.stat()
        os.utime(info.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a checkpoint written again
        built.append(load_or_build_pool(model, info, ids[:2000], "b" * 64)[1]["built"])
        cache_path(info).write_bytes(b"damaged")
        vectors, status = load_or_build_pool(model, info, ids[:2000], "b" * 64)
    assert built + [status["built"]] == [True, False, True, True, True, True]
    assert torch.equal(vectors, ffn_pool(model, ids[:2000]))


def test_the_table_view(run_copy, capsys):
    proc = run_here(capsys, "inspect", "run", "--checkpoints", str(run_copy), "--neighbors", "--eval", "40",
                    "--max-positions", "5000")
    assert proc.returncode == 0, proc.stderr
    for needle in ("FFN-neighbour method, measured", "all blocks", "unigram", "longest suffix", "the model",
                   "top-1 = model", "Hellinger", "40 positions drawn (seed 0)"):
        assert needle in proc.stdout
    assert "FFN outputs of the training text" in proc.stderr  # progress on stderr only


@pytest.mark.parametrize("args,needle", [
    (["--eval", "10"], "--neighbors"),
    (["--neighbors", "--eval", "0"], "--eval"),
    (["--neighbors", "--eval", "10000000"], "--eval"),
    (["--neighbors", "--eval", "5", "--seed", "-1"], "seed"),
])
def test_bad_eval_input_gives_one_line_error(run_copy, capsys, args, needle):
    assert_one_line_error(run_here(capsys, "inspect", "run", "--checkpoints", str(run_copy), *args), needle)
