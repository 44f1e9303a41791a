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
                num_labeled=0)
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

    data = load_labeled(_cfg(train=f"csv:{path}", test=f"csv:{path}", validation_fraction=0), seed=0)
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
    data = load_labeled(_cfg(train=f"jsonl:{path}", test=f"csv:{test}", validation_fraction=0), seed=0)
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
    # Exactly all of them is allowed; validation is carved out of them (20 %), nothing is left over.
    data = load_labeled(_cfg(train=train, test=test, num_labeled=15), seed=0)
    assert len(data.train) == 12 and len(data.validation) == 3 and data.unlabeled == []


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

    def load(n, seed, f=0.2, **kw):
        return load_labeled(_cfg(train=train, test=test, num_labeled=n, validation_fraction=f, **kw), seed=seed)

    def budget(d):
        return {k: v + _per_class(d.validation, d.label_names)[k] for k, v in _per_class(d.train, d.label_names).items()}

    data = load(30, seed=0)
    assert isinstance(data, LabeledData) and data.num_train_available == 84
    assert data.label_names == ["a", "b", "c"]
    # The budget (train + validation) is class-balanced; a short class gives all it has, the others fill.
    assert budget(data) == {"a": 13, "b": 13, "c": 4}
    assert budget(load(31, 0)) == {"a": 14, "b": 13, "c": 4}
    assert budget(load(10, 0)) == {"a": 4, "b": 3, "c": 3}  # remainder: low ids
    # Validation comes OUT of the budget: 20 % of 30 = 6, stratified by the budget's shares.
    assert data.labels_used == 30 and len(data.train) == 24 and len(data.validation) == 6
    assert _per_class(data.validation, data.label_names) == {"a": 3, "b": 2, "c": 1}
    assert not set(data.validation.texts) & set(data.train.texts)
    assert set(data.validation.texts) <= set(train_texts)
    assert not (set(data.validation.texts) | set(data.train.texts)) & test_texts
    assert data.test.texts == read_labeled(test)[0]  # test untouched, in file order
    # At least one validation example per class, and every class keeps a training example.
    tiny = load(6, 0, f=0.1)
    assert _per_class(tiny.validation, tiny.label_names) == {"a": 1, "b": 1, "c": 1} and tiny.labels_used == 6
    assert set(tiny.train.labels.tolist()) == {0, 1, 2}
    assert len(load(30, 0, f=0).validation) == 0 and len(load(30, 0, f=0).train) == 30
    assert len(load(0, 0, max_validation=5).validation) == 5  # the cap
    # The rest of the training split is handed out as texts only (no labels), never overlapping.
    assert len(data.unlabeled) == 84 - 30 and isinstance(data.unlabeled[0], str)
    assert not set(data.unlabeled) & (set(data.train.texts) | set(data.validation.texts))
    # Labels stay aligned with their texts.
    for split in (data.train, data.validation, data.test):
        assert all(t.split()[1] == data.label_names[l] for t, l in zip(split.texts, split.labels))

    # Deterministic per seed; different seeds pick different subsets.
    again = load(30, seed=0)
    assert again.train.texts == data.train.texts and again.validation.texts == data.validation.texts
    other = load(30, seed=1)
    assert set(other.train.texts) != set(data.train.texts)


def test_validation_size_by_hand():
    from tljax.data.labeled import validation_size
    assert validation_size(np.array([50, 50]), 0.2, 500).tolist() == [10, 10]
    assert validation_size(np.array([5, 5]), 0.05, 500).tolist() == [1, 1]  # at least one per class
    assert validation_size(np.array([1, 9]), 0.5, 500).tolist() == [0, 5]  # a single example stays for training
    assert validation_size(np.array([4000, 6000]), 0.2, 500).tolist() == [200, 300]  # the cap, stratified
    assert validation_size(np.array([50, 50]), 0.0, 500).tolist() == [0, 0]


def test_growing_budgets_nest(tmp_path):
    train, test = _dataset(tmp_path, {"neg": 200, "pos": 300})
    sets = [load_labeled(_cfg(train=train, test=test, num_labeled=n), seed=7) for n in (10, 40, 160)]
    for small, big in zip(sets, sets[1:]):
        assert set(small.train.texts) | set(small.validation.texts) < set(big.train.texts) | set(big.validation.texts)
    assert [d.labels_used for d in sets] == [10, 40, 160]


def test_explicit_validation_counts_in_labels_used(tmp_path):
    train, test = _dataset(tmp_path, {"a": 40, "b": 20})
    extra = _write_csv(tmp_path / "val.csv", [("x a 1", "a"), ("x b 2", "b"), ("x a 3", "a")])
    data = load_labeled(_cfg(train=train, test=test, num_labeled=20, validation=f"csv:{extra}"), seed=3)
    assert len(data.train) == 20 and data.validation.texts == ["x a 1", "x b 2", "x a 3"]  # nothing carved out
    assert data.extra_validation and data.labels_used == 23
    # The removed num_validation is a one-line error, never a silent change of meaning.
    with pytest.raises(SourceError, match="num_validation is no longer supported.*data.validation_fraction"):
        load_labeled(_cfg(train=train, test=test, num_validation=500), seed=0)
    with pytest.raises(SourceError, match="validation_fraction"):
        load_labeled(_cfg(train=train, test=test, validation_fraction=1.0), seed=0)


def test_unlabeled_pool_never_holds_test_texts(tmp_path):
    rows = [(f"text {i} {'a' if i % 2 else 'b'}", "a" if i % 2 else "b") for i in range(40)]
    train = _write_csv(tmp_path / "train.csv", rows)
    test = _write_csv(tmp_path / "test.csv", rows[30:] + [("fresh test text", "a")])  # 10 shared with train
    data = load_labeled(_cfg(train=f"csv:{train}", test=f"csv:{test}", num_labeled=10), seed=0)
    assert not set(data.unlabeled) & set(data.test.texts)
    assert len(data.unlabeled) == 40 - 10 - len({r[0] for r in rows[30:]} - set(data.train.texts)
                                                   - set(data.validation.texts))


def test_all_labeled_carves_validation(tmp_path):
    train, test = _dataset(tmp_path, {"a": 40, "b": 20})
    data = load_labeled(_cfg(train=train, test=test, num_labeled=0, validation_fraction=0.25), seed=3)
    assert len(data.validation) == 15 and len(data.train) == 45 and data.num_train_available == 60
    assert sorted(data.train.texts + data.validation.texts) == sorted(read_labeled(train)[0])
    assert _per_class(data.validation, data.label_names) == {"a": 10, "b": 5}
    assert data.unlabeled == []
    # Defaults apply when fields are missing (20 %); extra fields are ignored.
    minimal = ml_collections.ConfigDict(dict(train=train, test=test, seq_len=64))
    assert len(load_labeled(minimal, seed=0).validation) == 12


# --- the built-in dataset -----------------------------------------------------------------------------


def test_builtin_rotten_tomatoes(monkeypatch):
    from tljax.data import rotten_tomatoes
    user_cache = Path("~/.cache/tljax").expanduser()
    if (user_cache / "rotten_tomatoes" / "manifest.json").exists():
        monkeypatch.setenv("TLJAX_DATA_DIR", str(user_cache))
    else:
        rotten_tomatoes.prepare_rotten_tomatoes()
    manifest = json.loads((rotten_tomatoes.dataset_dir() / "manifest.json").read_text())

    data = load_labeled(_cfg(name="rotten_tomatoes", num_labeled=100), seed=0)
    assert data.label_names == ["rotten", "fresh"]
    assert data.num_train_available == manifest["splits"]["train"]["examples"]
    assert len(data.test) == manifest["splits"]["test"]["examples"]
    assert _per_class(data.train, data.label_names) == {"rotten": 40, "fresh": 40}
    assert _per_class(data.validation, data.label_names) == {"rotten": 10, "fresh": 10}
    assert not set(data.validation.texts) & set(data.train.texts)
    texts, ids = rotten_tomatoes.load_split("test")
    assert data.test.texts == texts and data.test.labels.tolist() == ids.tolist()  # rotten=0, fresh=1
    assert collections.Counter(data.test.labels.tolist())[1] == manifest["splits"]["test"]["fresh"]
    assert read_labeled("builtin:rotten_tomatoes/validation")[1][:1][0] in ("rotten", "fresh")
