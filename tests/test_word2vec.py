"""word2vec: the recipe's pieces against their formulas, the update against a numpy gradient, file
formats (gensim reads the export), features, and a tiny run that learns co-occurrence."""
import json
import math

from tljax.defaults import word2vec_config
import numpy as np
import pytest

from tljax import word2vec as w2v


def small_config(**kw):
    c = word2vec_config()
    c.update(dict(dim=16, window=3, min_count=1, sample=0.0, epochs=3, batch_size=64, steps_per_call=16,
                  chunk_tokens=5000, table_size=100_000, log_seconds=1e9), **kw)
    return c


def test_tokenize():
    assert w2v.tokenize("Don't stop, O\u2019Neil: 3.5km! foo_bar Éclair") == [
        "don't", "stop", "o'neil", "3", "5km", "foo", "bar", "éclair"]


def test_build_vocab_min_count_order_and_corpus():
    docs = ["b a a c", "a b d", "e"]
    words, counts, corpus = w2v.build_vocab(docs, min_count=2)
    assert words == ["a", "b"] and counts.tolist() == [3, 2]
    # rare words leave the stream; documents keep their boundaries (the last one becomes empty)
    assert corpus.ids.tolist() == [1, 0, 0, 0, 1] and corpus.doc_starts.tolist() == [0, 3, 5, 5]
    assert corpus.raw_tokens == 8


def test_unigram_table_frequencies_follow_count_pow_075():
    counts = np.array([5000, 800, 120, 30, 5, 1])
    size = 1_000_000
    table = w2v.unigram_table(counts, size=size)
    assert table.shape == (size,) and table.dtype == np.int32
    freq = np.bincount(table, minlength=len(counts)) / size
    expected = counts**0.75 / np.sum(counts**0.75)
    np.testing.assert_allclose(freq, expected, atol=2.0 / size)
    # a draw from the table is a draw from that distribution
    rng = np.random.default_rng(0)
    draws = np.bincount(table[rng.integers(0, size, 400_000)], minlength=len(counts)) / 400_000
    np.testing.assert_allclose(draws, expected, atol=4e-3)


def test_subsampling_probabilities_match_word2vec_c():
    counts = np.array([100_000, 10_000, 1_000, 100, 10])
    sample = 1e-3
    total = 111_110
    keep = w2v.keep_probabilities(counts, sample)
    by_hand = [min(1.0, (math.sqrt(c / (sample * total)) + 1) * (sample * total) / c) for c in counts]
    np.testing.assert_allclose(keep, by_hand, rtol=1e-12)
    assert keep[0] == pytest.approx((math.sqrt(100_000 / 111.11) + 1) * 111.11 / 100_000)  # ~0.0344
    assert keep[-1] == 1.0 and np.all(np.diff(keep) >= 0)
    np.testing.assert_array_equal(w2v.keep_probabilities(counts, 0.0), np.ones(5))


def test_dynamic_window_pairs():
    rng = np.random.default_rng(0)
    n, window = 200_000, 4
    doc = np.repeat(np.arange(n // 50), 50)
    center, context = w2v.window_pairs(np.arange(n), doc, window, rng)
    dist = np.abs(center - context)
    assert dist.min() >= 1 and dist.max() <= window
    assert np.all(doc[center] == doc[context])  # windows never cross documents
    assert np.all(np.diff(center) >= 0)  # corpus order
    # b ~ U{1..window}: a pair at distance k exists iff b >= k, so P = (window - k + 1) / window per side
    inner = (np.arange(n) % 50 >= window) & (np.arange(n) % 50 < 50 - window)  # away from doc edges
    per_distance = np.bincount(dist[inner[center]], minlength=window + 1)[1:] / (2 * inner.sum())
    np.testing.assert_allclose(per_distance, [(window - k + 1) / window for k in range(1, window + 1)],
                               atol=0.01)


def _numpy_loss(w_in, w_out, inputs, targets, negs):
    """Reference: sum over pairs of -log s(v_in . u_target) - sum_k [neg_k != target] log s(-v_in . u_neg_k)."""
    logsig = lambda x: -np.logaddexp(0.0, -x)
    loss = 0.0
    for i, t, ns in zip(inputs, targets, negs):
        loss -= logsig(w_in[i] @ w_out[t])
        for n in ns:
            if n != t:
                loss -= logsig(-(w_in[i] @ w_out[n]))
    return loss


def test_update_is_sgd_on_the_numpy_loss_gradient():
    import jax
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(1)
        V, d, B, K = 7, 4, 12, 3
        w_in, w_out = rng.normal(0, 0.5, (V, d)), rng.normal(0, 0.5, (V, d))
        inputs, targets = rng.integers(0, V, B), rng.integers(0, V, B)  # duplicates on purpose
        negs = rng.integers(0, V, (B, K))
        negs[0, 0] = targets[0]  # a negative equal to the target is skipped
        lr = 0.1
        # numeric gradient of the numpy loss (float64 central differences)
        grads = []
        for table in (w_in, w_out):
            g = np.zeros_like(table)
            for idx in np.ndindex(table.shape):
                old = table[idx]
                table[idx] = old + 1e-6
                up = _numpy_loss(w_in, w_out, inputs, targets, negs)
                table[idx] = old - 1e-6
                down = _numpy_loss(w_in, w_out, inputs, targets, negs)
                table[idx] = old
                g[idx] = (up - down) / 2e-6
            grads.append(g)
        update = jax.jit(w2v._sg_update)  # one compile instead of op-by-op dispatch
        new_in, new_out, loss, n = update(
            jax.numpy.asarray(w_in), jax.numpy.asarray(w_out), jax.numpy.asarray(inputs),
            jax.numpy.asarray(targets), jax.numpy.asarray(negs), jax.numpy.full((B,), lr))
        assert float(loss) == pytest.approx(_numpy_loss(w_in, w_out, inputs, targets, negs), rel=1e-9)
        assert float(n) == B
        np.testing.assert_allclose(np.asarray(new_in) - w_in, -lr * grads[0], atol=1e-7)
        np.testing.assert_allclose(np.asarray(new_out) - w_out, -lr * grads[1], atol=1e-7)
        # the closed-form gradients equal autodiff of sgns_loss
        h, u = w_in[inputs], w_out[np.concatenate([targets[:, None], negs], 1)]
        weight = np.concatenate([np.ones((B, 1)), negs != targets[:, None]], 1)
        both = jax.jit(lambda *a: (w2v._sgns_grads(*a)[:2], jax.grad(w2v.sgns_loss, argnums=(0, 1))(*a)))
        (dh, du), (ah, au) = both(h, u, weight)
        np.testing.assert_allclose(dh, ah, atol=1e-12)
        np.testing.assert_allclose(du, au, atol=1e-12)
        # lr 0 (padding) changes nothing and is not counted
        same_in, same_out, _, n0 = update(
            jax.numpy.asarray(w_in), jax.numpy.asarray(w_out), jax.numpy.asarray(inputs),
            jax.numpy.asarray(targets), jax.numpy.asarray(negs), jax.numpy.zeros((B,)))
        np.testing.assert_array_equal(same_in, w_in)
        np.testing.assert_array_equal(same_out, w_out)
        assert float(n0) == 0
    finally:
        jax.config.update("jax_enable_x64", False)


def _random_vectors(words=("the", "cat", "sat", "on", "mat", "naïve", "o'neil")):
    rng = np.random.default_rng(0)
    return w2v.WordVectors(rng.normal(size=(len(words), 8)).astype(np.float32),
                           {w: i for i, w in enumerate(words)}, np.arange(len(words))[::-1] + 5)


def test_save_load_round_trip(tmp_path):
    vectors = _random_vectors()
    w2v.save(vectors, tmp_path / "run")
    loaded = w2v.load(tmp_path / "run")
    assert loaded.index == vectors.index
    np.testing.assert_array_equal(loaded.vectors, vectors.vectors)
    np.testing.assert_array_equal(loaded.counts, vectors.counts)
    assert (tmp_path / "run" / "vocab.txt").read_text(encoding="utf-8").splitlines()[0] == "the 11"
    with pytest.raises(FileNotFoundError, match="no word vectors"):
        w2v.load(tmp_path)


@pytest.mark.parametrize("binary", [False, True])
def test_gensim_reads_the_export(tmp_path, binary):
    from gensim.models import KeyedVectors
    vectors = _random_vectors()
    path = tmp_path / ("v.bin" if binary else "v.txt")
    w2v.export_word2vec_format(vectors, path, binary=binary)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert kv.index_to_key == vectors.words
    for w in vectors.words:
        np.testing.assert_allclose(kv[w], vectors[w], rtol=1e-5, atol=1e-6)
    back = w2v.load_word2vec_format(path, binary=binary)  # and we read gensim's writing too
    kv.save_word2vec_format(str(tmp_path / "g.txt"))
    again = w2v.load(tmp_path / "g.txt")
    assert back.index == again.index == vectors.index
    np.testing.assert_allclose(again.vectors, vectors.vectors, rtol=1e-5, atol=1e-6)


def test_text_features_average_in_vocabulary_tokens():
    vectors = _random_vectors()
    feats = w2v.text_features(vectors, ["The cat, the MAT!", "zzz qqq", "", "cat unknownword"])
    assert feats.shape == (4, 8) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], (2 * vectors["the"] + vectors["cat"] + vectors["mat"]) / 4, rtol=1e-6)
    np.testing.assert_array_equal(feats[1], 0)
    np.testing.assert_array_equal(feats[2], 0)
    np.testing.assert_allclose(feats[3], vectors["cat"])


def test_spacy_loader_reads_a_spacy_vocab_folder(tmp_path):
    import msgpack
    assert w2v._murmurhash64a(b"coffee") == 3197928453018144401  # spaCy's documented hash of "coffee"
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    strings = ["Coffee", "coffee", "Tea", "unused"]
    key2row = {w2v._murmurhash64a(b"coffee"): 0, w2v._murmurhash64a(b"Coffee"): 0,
               w2v._murmurhash64a(b"Tea"): 2}
    with open(tmp_path / "vectors", "wb") as f:
        np.save(f, vectors)
    (tmp_path / "key2row").write_bytes(msgpack.packb(key2row))
    (tmp_path / "strings.json").write_text(json.dumps(strings))
    wv = w2v.load_spacy_vectors(tmp_path)
    assert wv.index == {"Coffee": 0, "coffee": 0, "Tea": 2, "tea": 2}
    np.testing.assert_array_equal(w2v.text_features(wv, ["TEA"])[0], vectors[2])
    assert w2v.load_spacy_vectors(tmp_path).index == wv.index  # from the cached index


def _paired_corpus(n_docs=300, seed=0):
    """Documents of random filler words and 10 topics: topic k's words ``aK`` and ``bK`` are
    interchangeable (each occurrence picks one) between topic k's context words ``cKx0..3``."""
    rng = np.random.default_rng(seed)
    filler = [f"w{i}" for i in range(40)]
    docs = []
    for _ in range(n_docs):
        tokens = []
        for _ in range(12):
            tokens += list(rng.choice(filler, size=rng.integers(2, 5)))
            k = rng.integers(0, 10)
            c1, c2 = rng.integers(0, 4, 2)
            tokens += [f"c{k}x{c1}", "ab"[rng.integers(0, 2)] + str(k), f"c{k}x{c2}"]
        docs.append(" ".join(tokens))
    return docs


@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_tiny_training_learns_co_occurrence(model):
    result = w2v.train(_paired_corpus(), small_config(model=model, epochs=4 if model == "skipgram" else 6,
                                                      lr=0.025 if model == "skipgram" else 0.05), log=lambda m: None)
    wv = result.vectors
    assert wv.vectors.shape == (len(wv), 16) and len(wv) == 100
    # words with the same contexts end up with the most similar vectors
    hits = sum(wv.most_similar(f"a{k}", topn=1)[0][0] == f"b{k}" for k in range(10))
    assert hits >= 9, [wv.most_similar(f"a{k}", topn=1) for k in range(10)]
    s = result.summary
    assert s["final_loss"] < 0.75 * (1 + 5) * math.log(2) and s["examples"] > 0 and s["words_per_second"] > 0


def test_cli_word2vec_writes_the_run(tmp_path, monkeypatch):
    from gensim.models import KeyedVectors
    from tljax import cli

    def main(*args):
        return cli.main(list(args))

    (tmp_path / "corpus.txt").write_text("\n\n".join(_paired_corpus(60)), encoding="utf-8")
    workdir = tmp_path / "run"
    main("word2vec", "--config", "configs/word2vec.py", "--workdir", str(workdir),
         f"--config.data.source=text:{tmp_path}/corpus.txt", "--config.epochs=1", "--config.dim=8",
         "--config.min_count=1", "--config.table_size=10000", "--config.steps_per_call=8")
    for name in ("vectors.npz", "vocab.txt", "vectors.txt", "config.json", "summary.json"):
        assert (workdir / name).exists(), name
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["vocab_size"] == 100 and summary["words_per_second"] > 0
    kv = KeyedVectors.load_word2vec_format(str(workdir / "vectors.txt"))
    np.testing.assert_allclose(kv["a1"], w2v.load(workdir)["a1"], rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit):
        main("word2vec", "--config", "configs/word2vec.py", "--workdir", str(tmp_path / "bad"),
             "--config.model=glove")
    with pytest.raises(SystemExit):
        main("word2vec", "--config", "configs/word2vec.py", "--workdir", str(tmp_path / "bad"),
             "--config.data.source=text:/nonexistent/*.txt")
    assert not (tmp_path / "bad").exists()  # bad input writes nothing
