"""Packing, batch order, sources and tokenizers."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from tljax.data import packing, sources
from tljax.data import tokenizer as tok_lib


def test_pack_bert_rows_and_stream_order():
    stream = np.arange(10, 40, dtype=np.int32)
    rows = packing.pack(stream, 8, "bert", cls_id=2, sep_id=3)
    assert rows.shape == (5, 8)
    assert (rows[:, 0] == 2).all() and (rows[:, -1] == 3).all()
    np.testing.assert_array_equal(rows[:, 1:-1].ravel(), stream[:30])
    gpt = packing.pack(stream, 8, "gpt")
    np.testing.assert_array_equal(gpt.ravel(), stream[:24])


def test_token_stream_separates_documents():
    tok = tok_lib.train_wordpiece(["hello world", "good bye world"] * 20, vocab_size=60)
    stream = packing.token_stream(["hello world", "good bye"], tok, separator_id=3)
    ids = tok("hello world", add_special_tokens=False)["input_ids"] + [3] + \
        tok("good bye", add_special_tokens=False)["input_ids"] + [3]
    np.testing.assert_array_equal(stream, ids)


def test_batches_are_deterministic_cover_each_epoch_and_split_over_processes():
    seqs = np.arange(50 * 4).reshape(50, 4)
    data = packing.PackedBatches(seqs, global_batch=10, seed=7)
    epoch0 = np.concatenate([data.indices(s) for s in range(5)])
    assert sorted(epoch0) == list(range(50))  # one epoch = every sequence once
    assert not np.array_equal(epoch0, np.concatenate([data.indices(s) for s in range(5, 10)]))  # reshuffled
    again = packing.PackedBatches(seqs, global_batch=10, seed=7)
    np.testing.assert_array_equal(again.local_batch(13), data.local_batch(13))
    # A process reads the rows its devices hold; together they read the one global batch.
    parts = [data.local_batch(13, np.arange(p, p + 5)) for p in (0, 5)]
    np.testing.assert_array_equal(np.concatenate(parts), data.local_batch(13))
    assert data.position(7) == {"step": 7, "epoch": 1, "index_in_epoch": 20, "sequences": 50}


def test_text_and_jsonl_sources(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\nstill first.\n\nSecond one.\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "doc one"}) + "\n\n" + json.dumps({"body": "doc two"}) + "\n")
    assert list(sources.iter_documents(f"text:{tmp_path}/*.txt")) == ["First paragraph.\nstill first.", "Second one."]
    assert list(sources.iter_documents(f"jsonl:{tmp_path}/b.jsonl@body")) == ["doc one", "doc two"]
    with pytest.raises(sources.SourceError, match="has no field 'text'"):
        list(sources.iter_documents(f"jsonl:{tmp_path}/b.jsonl"))
    with pytest.raises(sources.SourceError, match="no file matches"):
        list(sources.iter_documents(f"text:{tmp_path}/missing/*.txt"))
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(sources.SourceError, match="not UTF-8"):
        list(sources.iter_documents(f"text:{tmp_path}/bad.txt"))
    with pytest.raises(sources.SourceError, match="KIND:ARGS"):
        sources.parse_spec("books/*.txt")


def test_holdout_selection_is_disjoint_and_stable():
    docs = [f"document number {i}" for i in range(3000)]
    train = list(sources.select_documents(docs, holdout=0.05))
    held = list(sources.select_documents(docs, holdout=0.05, take_holdout=True))
    assert not set(train) & set(held) and len(train) + len(held) == 3000
    assert 0.03 < len(held) / 3000 < 0.07
    half = list(sources.select_documents(docs, subsample=0.5))
    assert 0.45 < len(half) / 3000 < 0.55 and half == list(sources.select_documents(docs, subsample=0.5))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_round_trips_through_auto_tokenizer(kind, tmp_path):
    docs = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs."] * 50
    tok = tok_lib.train_tokenizer(kind, docs, vocab_size=300)
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "the lazy fox jumps"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]).strip() == text
    if kind == "wordpiece":
        assert [loaded.pad_token_id, loaded.cls_token_id, loaded.sep_token_id, loaded.mask_token_id] == [0, 2, 3, 4]
        assert loaded(text)["input_ids"][0] == 2 and loaded(text)["input_ids"][-1] == 3
    else:
        assert loaded.eos_token_id == 0


def test_cached_array_is_written_once(tmp_path):
    calls = []
    build = lambda: calls.append(1) or np.arange(3)
    a = packing.cached_array(tmp_path / "x.npy", build)
    b = packing.cached_array(tmp_path / "x.npy", build)
    np.testing.assert_array_equal(a, b)
    assert calls == [1] and list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_tfds_source_reads_array_record_without_tensorflow(tmp_path, monkeypatch):
    """A real TFDS builder (the embedded corpus, here on a two-document stand-in) prepared as
    array_record and read back through ``tfds:`` with ``tfds.data_source``."""
    corpus_dir = tmp_path / "cache" / "corpus"
    corpus_dir.mkdir(parents=True)
    docs = {"train": ["first train document", "second train document"], "eval": ["held out text"]}
    for split, texts in docs.items():
        (corpus_dir / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "source": "x"}) + "\n" for t in texts))
    from tljax.data import prepared
    monkeypatch.setattr(prepared, "corpus_paths", lambda: {s: corpus_dir / f"{s}.jsonl" for s in docs})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    import sys
    assert "tensorflow" not in sys.modules
    got = list(sources.iter_documents("tfds:tljax_corpus:train"))
    assert sorted(got) == sorted(docs["train"])
    assert list(sources.iter_documents("tfds:tljax_corpus:eval@text")) == docs["eval"]
    assert any((tmp_path / "tfds").rglob("*.array_record*"))
    assert "tensorflow" not in sys.modules
