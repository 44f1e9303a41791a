"""Tests of the labeled text-classification data layer (tljax.data.labeled).

All run in seconds without network, on small files in tmp_path; the Rotten Tomatoes test uses the
prepared cache at ~/.cache/tljax when there is one (otherwise it prepares it, ~20 s).
"""

from __future__ import annotations

import collections
import csv
import json
import sys
import types
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from tljax.data import labeled
from tljax.data.labeled import (LabeledData, SourceError, load_labeled,
                                read_labeled)


def _write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _cfg(**kw) -> ml_collections.ConfigDict:
    base = dict(name="", train="", test="", text_field="text", label_field="label",
                num_labeled=0, num_validation=500)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _dataset(tmp_path: Path, counts: dict[str, int], test_counts=None) -> tuple[str, str]:
    """A jsonl train/test pair with ``counts[label]`` examples per label; texts are unique."""
    train = [{"text": f"train {lab} {i}", "label": lab} for lab, n in counts.items() for i in range(n)]
    test = [{"text": f"test {lab} {i}", "label": lab}
            for lab, n in (test_counts or {k: 3 for k in counts}).items() for i in range(n)]
    np.random.default_rng(123).shuffle(train)  # file order mixes the classes
    return (f"jsonl:{_write_jsonl(tmp_path / 'train.jsonl', train)}",
            f"jsonl:{_write_jsonl(tmp_path / 'test.jsonl', test)}")


def _per_class(split, names) -> dict[str, int]:
    c = collections.Counter(split.labels.tolist())
    return {names[i]: c[i] for i in range(len(names))}


# --- reading ----------------------------------------------------------------------------------------


def test_csv_quoted_commas_newlines_and_string_labels(tmp_path):
    rows = [("Great, funny, and \"warm\".", "pos"),
            ("Dull.\nTwo lines, even.", "neg"),
            ("Fine, I guess", "neutral"),
            ("Loved it", "pos")]
    path = _write_csv(tmp_path / "train.csv", rows)
    texts, labels = read_labeled(f"csv:{path}")
    assert texts == [r[0] for r in rows]
    assert labels == ["pos", "neg", "neutral", "pos"]

    # Other column names and order, a UTF-8 byte-order mark (Excel), and a blank line at the end.
    other = tmp_path / "other.csv"
    other.write_text("\ufefflabel,review,extra\r\npos,\"a, b\",x\r\nneg,c,y\r\n\r\n", encoding="utf-8")
    assert read_labeled(f"csv:{other}", text_field="review") == (["a, b", "c"], ["pos", "neg"])

    data = load_labeled(_cfg(train=f"csv:{path}", test=f"csv:{path}", num_validation=0), seed=0)
    assert data.label_names == ["neg", "neutral", "pos"]  # sorted strings
    assert data.train.texts == texts and data.train.labels.tolist() == [2, 0, 1, 2]
    assert data.train.labels.dtype == np.int32
    assert data.test.labels.tolist() == [2, 0, 1, 2]
    assert len(data.validation) == 0 and data.validation.labels.dtype == np.int32


def test_jsonl_int_labels_sort_numerically(tmp_path):
    records = [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 1},
               {"text": "d", "label": 2}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n"
                    + "\n".join(json.dumps(r) for r in records[2:]) + "\n", encoding="utf-8")
    texts, labels = read_labeled(f"jsonl:{path}")
    assert texts == ["a", "b", "c", "d"] and labels == [10, 2, 1, 2]

    # The test file stores the same labels as strings (as a CSV would): they still match.
    test = _write_csv(tmp_path / "test.csv", [("x", "10"), ("y", "1")])
    data = load_labeled(_cfg(train=f"jsonl:{path}", test=f"csv:{test}", num_validation=0), seed=0)
    assert data.label_names == ["1", "2", "10"]  # numeric, not lexicographic
    assert data.train.labels.tolist() == [2, 1, 0, 1]
    assert data.test.labels.tolist() == [2, 0]
    assert data.num_train_available == 4


def test_tfds_spec_reads_through_data_source(monkeypatch):
    calls = {}

    class FakeSource:
        records = [{"sentence": b"caf\xc3\xa9 ok", "label": np.int64(1)},
                   {"sentence": b"bad", "label": np.int64(0)}]

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return self.records[i]

    def data_source(name, split, builder_kwargs):
        calls.update(name=name, split=split, builder_kwargs=builder_kwargs)
        return FakeSource()

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))
    texts, labels = read_labeled("tfds:glue/sst2:train[:80%]", text_field="sentence")
    assert texts == ["café ok", "bad"] and labels == [1, 0]
    assert calls == dict(name="glue/sst2", split="train[:80%]",
                         builder_kwargs={"file_format": "array_record"})
    with pytest.raises(SourceError, match=r"no feature 'text' \(features: sentence, label\)"):
        read_labeled("tfds:glue/sst2:train")


# --- errors -----------------------------------------------------------------------------------------


def _one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_column_lists_available(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [("hi", "1")], header=("sentence", "label"))
    with pytest.raises(SourceError) as e:
        read_labeled(f"csv:{path}")
    msg = _one_line(e)
    assert str(path) in msg and "'text'" in msg and "sentence, label" in msg and "data.text_field" in msg

    jpath = _write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "stars": 2}])
    with pytest.raises(SourceError) as e:
        read_labeled(f"jsonl:{jpath}")
    msg = _one_line(e)
    assert f"{jpath} line 2" in msg and "'label'" in msg and "text, stars" in msg and "data.label_field" in msg


def test_empty_text_names_file_and_row(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [("fine", "a"), ("ok", "b"), ("   ", "a")])
    with pytest.raises(SourceError) as e:
        read_labeled(f"csv:{path}")
    msg = _one_line(e)
    assert str(path) in msg and "row 3" in msg and "empty text" in msg

    jpath = _write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "", "label": 0}])
    with pytest.raises(SourceError, match=r"d\.jsonl line 2: empty text"):
        read_labeled(f"jsonl:{jpath}")
    with pytest.raises(SourceError, match=r"row 1 .*empty label"):
        read_labeled(f"csv:{_write_csv(tmp_path / 'e.csv', [('text', '')])}")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\u00e9,pos\n".encode("latin-1"))
    with pytest.raises(SourceError) as e:
        read_labeled(f"csv:{path}")
    msg = _one_line(e)
    assert str(path) in msg and "not UTF-8" in msg and "iconv" in msg


def test_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(SourceError) as e:
        read_labeled("parquet:/data/x.parquet")
    msg = _one_line(e)
    assert "'parquet'" in msg and "csv:PATH" in msg and "jsonl:PATH" in msg
    with pytest.raises(SourceError, match="not of the form KIND:ARGS"):
        read_labeled("/data/x.csv")
    with pytest.raises(SourceError, match="unknown builtin"):
        read_labeled("builtin:imdb/train")

    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError) as e:
        read_labeled(f"csv:{missing}")
    msg = _one_line(e)
    assert str(missing) in msg and "does not exist" in msg and "data.train" in msg
    with pytest.raises(SourceError, match="data.test is set but data.train is empty"):
        load_labeled(_cfg(test=f"csv:{missing}"), seed=0)
    with pytest.raises(SourceError, match="unknown labeled dataset"):
        load_labeled(_cfg(name="imdb"), seed=0)


def test_fewer_than_two_classes(tmp_path):
    train, test = _dataset(tmp_path, {"pos": 5})
    with pytest.raises(SourceError) as e:
        load_labeled(_cfg(train=train, test=test), seed=0)
    msg = _one_line(e)
    assert "1 class" in msg and "at least 2" in msg and "train.jsonl" in msg


def test_num_labeled_bounds(tmp_path):
    train, test = _dataset(tmp_path, {"a": 5, "b": 5, "c": 5})
    with pytest.raises(SourceError) as e:
        load_labeled(_cfg(train=train, test=test, num_labeled=2), seed=0)
    msg = _one_line(e)
    assert "num_labeled=2" in msg and "3 classes" in msg
    with pytest.raises(SourceError) as e:
        load_labeled(_cfg(train=train, test=test, num_labeled=16), seed=0)
    msg = _one_line(e)
    assert "num_labeled=16" in msg and "15 training examples" in msg
    with pytest.raises(SourceError, match="whole number"):
        load_labeled(_cfg(train=train, test=test, num_labeled=-1), seed=0)
    # Exactly all of them is allowed; nothing is left for validation.
    data = load_labeled(_cfg(train=train, test=test, num_labeled=15), seed=0)
    assert len(data.train) == 15 and len(data.validation) == 0


def test_unseen_test_label(tmp_path):
    train, test = _dataset(tmp_path, {"pos": 5, "neg": 5}, test_counts={"pos": 2, "mixed": 1})
    with pytest.raises(SourceError) as e:
        load_labeled(_cfg(train=train, test=test), seed=0)
    msg = _one_line(e)
    assert "'mixed'" in msg and "test.jsonl" in msg and "never appears in the training data" in msg


# --- subsampling ----------------------------------------------------------------------------------------


def test_balanced_subsample_counts_determinism_and_validation(tmp_path):
    train, test = _dataset(tmp_path, {"a": 50, "b": 30, "c": 4})
    train_texts, _ = read_labeled(train)
    test_texts = set(read_labeled(test)[0])

    def load(n, seed, v=10):
        return load_labeled(_cfg(train=train, test=test, num_labeled=n, num_validation=v), seed=seed)

    data = load(30, seed=0)
    assert isinstance(data, LabeledData) and data.num_train_available == 84
    assert data.label_names == ["a", "b", "c"]
    assert _per_class(data.train, data.label_names) == {"a": 13, "b": 13, "c": 4}  # c short: others fill
    assert _per_class(load(31, 0).train, data.label_names) == {"a": 14, "b": 13, "c": 4}
    assert _per_class(load(9, 0).train, data.label_names) == {"a": 3, "b": 3, "c": 3}
    assert _per_class(load(10, 0).train, data.label_names) == {"a": 4, "b": 3, "c": 3}  # remainder: low ids
    assert _per_class(load(11, 0).train, data.label_names) == {"a": 4, "b": 4, "c": 3}

    # Validation: the requested size, stratified, disjoint from train, all from the training file.
    assert len(data.validation) == 10
    assert not set(data.validation.texts) & set(data.train.texts)
    assert set(data.validation.texts) <= set(train_texts)
    assert not (set(data.validation.texts) | set(data.train.texts)) & test_texts
    assert _per_class(data.validation, data.label_names) == {"a": 6, "b": 4, "c": 0}  # by full-split shares; c has none left
    assert data.test.texts == read_labeled(test)[0]  # test untouched, in file order
    # Labels stay aligned with their texts.
    for split in (data.train, data.validation, data.test):
        assert all(t.split()[1] == data.label_names[l] for t, l in zip(split.texts, split.labels))

    # Deterministic per seed; different seeds pick different subsets.
    again = load(30, seed=0)
    assert again.train.texts == data.train.texts and again.validation.texts == data.validation.texts
    other = load(30, seed=1)
    assert set(other.train.texts) != set(data.train.texts)
    assert set(other.validation.texts) != set(data.validation.texts)

    # Validation is capped by what remains after num_labeled.
    assert len(load(80, 0, v=10).validation) == 4


def test_growing_num_labeled_nests_and_keeps_validation(tmp_path):
    train, test = _dataset(tmp_path, {"neg": 200, "pos": 300})
    sets = [load_labeled(_cfg(train=train, test=test, num_labeled=n, num_validation=50), seed=7)
            for n in (10, 40, 160)]
    for small, big in zip(sets, sets[1:]):
        assert set(small.train.texts) < set(big.train.texts)
        assert small.validation.texts == big.validation.texts
    assert _per_class(sets[0].validation, sets[0].label_names) == {"neg": 20, "pos": 30}  # stratified


def test_all_labeled_carves_validation(tmp_path):
    train, test = _dataset(tmp_path, {"a": 40, "b": 20})
    data = load_labeled(_cfg(train=train, test=test, num_labeled=0, num_validation=15), seed=3)
    assert len(data.validation) == 15 and len(data.train) == 45 and data.num_train_available == 60
    assert sorted(data.train.texts + data.validation.texts) == sorted(read_labeled(train)[0])
    assert _per_class(data.validation, data.label_names) == {"a": 10, "b": 5}
    # Never more than half of a small training split, and every class keeps training examples.
    small = load_labeled(_cfg(train=train, test=test, num_labeled=0, num_validation=500), seed=3)
    assert len(small.validation) == 30 and len(small.train) == 30
    assert set(small.train.labels.tolist()) == {0, 1}
    # Defaults apply when fields are missing; extra fields are ignored.
    minimal = ml_collections.ConfigDict(dict(train=train, test=test, seq_len=64))
    assert len(load_labeled(minimal, seed=0).validation) == 30


# --- the built-in dataset -----------------------------------------------------------------------------


def test_builtin_rotten_tomatoes(monkeypatch):
    from tljax.data import rotten_tomatoes
    user_cache = Path("~/.cache/tljax").expanduser()
    if (user_cache / "rotten_tomatoes" / "manifest.json").exists():
        monkeypatch.setenv("TLJAX_DATA_DIR", str(user_cache))
    else:
        rotten_tomatoes.prepare_rotten_tomatoes()
    manifest = json.loads((rotten_tomatoes.dataset_dir() / "manifest.json").read_text())

    data = load_labeled(_cfg(name="rotten_tomatoes", num_labeled=100, num_validation=200), seed=0)
    assert data.label_names == ["rotten", "fresh"]
    assert data.num_train_available == manifest["splits"]["train"]["examples"]
    assert len(data.test) == manifest["splits"]["test"]["examples"]
    assert _per_class(data.train, data.label_names) == {"rotten": 50, "fresh": 50}
    assert len(data.validation) == 200
    assert not set(data.validation.texts) & set(data.train.texts)
    texts, ids = rotten_tomatoes.load_split("test")
    assert data.test.texts == texts and data.test.labels.tolist() == ids.tolist()  # rotten=0, fresh=1
    assert collections.Counter(data.test.labels.tolist())[1] == manifest["splits"]["test"]["fresh"]
    assert read_labeled("builtin:rotten_tomatoes/validation")[1][:1][0] in ("rotten", "fresh")
