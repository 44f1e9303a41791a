"""Labeled text-classification data for fine-tuning (``tljax finetune``).

A labeled source spec is a string ``KIND:ARGS``:
- ``csv:PATH`` — a CSV file with a header row (stdlib ``csv``: quoted commas and newlines are fine,
  a UTF-8 byte-order mark is ignored); text and label in the columns ``text_field`` / ``label_field``.
- ``jsonl:PATH`` — one JSON object per line (blank lines skipped) with those two fields.
- ``tfds:name/config:split`` — a TFDS dataset read through ``tfds.data_source`` on array_record files
  (no TensorFlow); the split may carry a slice, e.g. ``tfds:imdb_reviews:train[:80%]``.
- ``builtin:rotten_tomatoes/SPLIT`` — the prepared Rotten Tomatoes split (``train``, ``validation``,
  ``test``); labels come back as their names ``"rotten"`` / ``"fresh"``.
- ``builtin:chinese_reviews/SPLIT`` — the prepared Chinese reviews (``train``, ``test``; labels
  ``"negative"`` / ``"positive"``; tljax/data/chinese_reviews.py), the cross-language case.

``PATH`` may also be a glob; the matching files are read in sorted order.

Labels may be strings or ints. :func:`load_labeled` maps them to ids by the **sorted unique training
labels** (all-integer labels, including integer strings such as ``"10"`` in a CSV, sort numerically;
anything else sorts as strings), except the built-in sets, which keep their own order (Rotten Tomatoes
rotten=0, fresh=1; Chinese reviews negative=0, positive=1). Every problem is reported as a one-line :class:`SourceError`.

The label budget (``num_labeled``) is **all** the labels a run reads: a class-balanced, seeded
sample of N training examples (each class's examples are shuffled once with the seed; the budget
is a prefix of each class's order, so for one seed the budgets of growing N are nested). The
validation set for early stopping and model selection is carved out of the budget (stratified,
``validation_fraction`` of it, at least one per class, at most ``max_validation``), never drawn
from outside it. Labeled validation data beyond the budget is used only when the user names it
(``data.validation=csv:...``); ``LabeledData.labels_used`` counts every label a run reads.
The training examples outside the budget are handed out as texts only (``unlabeled``, their labels
dropped here, texts that also occur in the test split removed): the pool for self-training.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import numbers
import os
import re
from pathlib import Path

import numpy as np

from tljax.data import prepared
from tljax.defaults import finetune_config
from tljax.data.sources import SourceError

__all__ = ["LabeledSplit", "LabeledData", "read_labeled", "read_texts", "load_labeled",
           "SourceError"]

_SPEC_KINDS = ("csv", "jsonl", "tfds", "builtin")
_SPEC_HELP = ("csv:PATH, jsonl:PATH, tfds:name/config:split or builtin:rotten_tomatoes/SPLIT "
              "(or builtin:chinese_reviews/SPLIT)")
_INT_RE = re.compile(r"[+-]?\d+")
_BUILTIN_RT = "rotten_tomatoes"
_DATA_SETTINGS = ("data.text_field", "data.label_field")  # what a missing-field error tells the user to set
REMOVED_NUM_VALIDATION = (
    "data.num_validation is no longer supported: it drew validation labels outside the label budget. "
    "Validation now comes out of data.num_labeled (data.validation_fraction, default 0.2); "
    "to add labeled validation data beyond the budget, name it with data.validation=csv:PATH")


@dataclasses.dataclass
class LabeledSplit:
    """One split of labeled examples.

    ``texts``: N strings; ``labels``: int32 array of shape [N], ids into ``LabeledData.label_names``.
    """

    texts: list[str]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class LabeledData:
    """Train / validation / test splits with a shared label vocabulary.

    ``train``: the (possibly subsampled) labeled training set, in file order.
    ``validation``: for early stopping / model selection: a stratified carve-out of the label budget
    (never test), in file order, or the user's explicit ``data.validation`` set (``extra_validation``).
    Empty when ``validation_fraction`` is 0.
    ``test``: the full test split, in file order.
    ``label_names``: id -> original label as a string.
    ``num_train_available``: size of the full training split before subsampling.
    ``unlabeled``: training-split texts outside the budget, without labels (none of them occurs in
    the test split): what self-training may pseudo-label.
    ``extra_validation``: True when ``validation`` came from ``data.validation`` (labels beyond the budget).
    """

    train: LabeledSplit
    validation: LabeledSplit
    test: LabeledSplit
    label_names: list[str]
    num_train_available: int
    unlabeled: list[str] = dataclasses.field(default_factory=list)
    extra_validation: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def labels_used(self) -> int:
        """Every label the run reads: the budget (train + carved validation) plus any explicit validation."""
        return len(self.train) + len(self.validation)


# --- reading -------------------------------------------------------------------------------------


def read_labeled(spec: str, text_field: str = "text", label_field: str = "label",
                 settings=_DATA_SETTINGS) -> tuple[list[str], list]:
    """Read the (text, raw label) pairs of a labeled spec, in file order.

    spec: ``'csv:PATH' | 'jsonl:PATH' | 'tfds:name/config:split' | 'builtin:rotten_tomatoes/<split>'``.
    Returns ``(texts, labels)``: two lists of equal length N; texts are non-empty strings, labels are
    the values as stored (str for CSV and the builtin set, str/int for JSONL, int for TFDS class labels).
    Raises :class:`SourceError` for a missing file or field, an empty text, a non-UTF-8 file,
    or an unknown spec kind. ``settings``: the (text, label) setting names a missing-field error suggests.
    """
    kind, sep, args = str(spec).partition(":")
    if not sep:
        raise SourceError(f"labeled data spec {spec!r} is not of the form KIND:ARGS; use {_SPEC_HELP}")
    if kind not in _SPEC_KINDS:
        raise SourceError(f"labeled data spec {spec!r} has unknown kind {kind!r}; use {_SPEC_HELP}")
    if not args.strip():
        raise SourceError(f"labeled data spec {spec!r} names nothing after '{kind}:'; use {_SPEC_HELP}")
    text_field = text_field or "text"
    label_field = label_field or "label"
    if kind == "csv":
        return _read_files(args, spec, _read_csv, text_field, label_field, settings)
    if kind == "jsonl":
        return _read_files(args, spec, _read_jsonl, text_field, label_field, settings)
    if kind == "tfds":
        return _read_tfds(args, spec, text_field, label_field, settings)
    return _read_builtin(args, spec)


def read_texts(spec: str, text_field: str = "text", settings=("--text_field", "--label_field")) -> list[str]:
    """The N texts of ``spec`` (``csv:``, ``jsonl:``, ``tfds:``, ``builtin:`` as in :func:`read_labeled`; no label
    column needed), in file order. ``settings`` names the flag that chooses the text field in error messages.
    Raises :class:`SourceError` as :func:`read_labeled` does."""
    kind, sep, args = str(spec).partition(":")
    if not sep or kind not in _SPEC_KINDS or not args.strip():
        raise SourceError(f"input spec {spec!r} is not one of {_SPEC_HELP}")
    text_field = text_field or "text"
    if kind in ("csv", "jsonl"):
        reader = _read_csv if kind == "csv" else _read_jsonl
        return _read_files(args, spec, reader, text_field, None, settings)[0]
    if kind == "tfds":
        return _read_tfds(args, spec, text_field, None, settings)[0]
    return _read_builtin(args, spec)[0]


def _files(pattern: str, spec: str) -> list[Path]:
    pattern = os.path.expanduser(pattern.strip())
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        raise SourceError(f"{pattern} (from {spec!r}) is a directory; name a file, or a glob such as "
                          f"'{os.path.join(pattern, '*.csv')}'")
    matched = [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if Path(m).is_file()]
    if not matched:
        raise SourceError(f"labeled data file {pattern} (from {spec!r}) does not exist; "
                          "check the path in data.train / data.test")
    return matched


def _read_files(args, spec, reader, text_field, label_field, settings=_DATA_SETTINGS):
    texts, labels = [], []
    for path in _files(args, spec):
        t, l = reader(path, text_field, label_field, settings)
        if not t:
            raise SourceError(f"{path} (from {spec!r}) holds no examples; check that it is the right file")
        texts.extend(t)
        labels.extend(l)
    return texts, labels


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); "
                          "convert it first, e.g. `iconv -f latin1 -t utf-8`") from None


def _check_text(text, where: str, field: str) -> str:
    if text is None or (isinstance(text, str) and not text.strip()):
        raise SourceError(f"{where}: empty text in {field!r}; fill it in or remove the row")
    if not isinstance(text, str):
        raise SourceError(f"{where}: {field!r} holds a {type(text).__name__}, not text; "
                          "set data.text_field to the text column")
    return text


def _check_label(label, where: str, field: str):
    if label is None or (isinstance(label, str) and not label.strip()):
        raise SourceError(f"{where}: empty label in {field!r}; fill it in or remove the row")
    if not isinstance(label, (str, numbers.Integral, float)):
        raise SourceError(f"{where}: label in {field!r} is a {type(label).__name__}; "
                          "labels must be strings or integers")
    return label


def _read_csv(path: Path, text_field: str, label_field: str | None, settings=_DATA_SETTINGS):
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise SourceError(f"{path} is empty; a CSV header row with {text_field!r} and "
                              f"{label_field!r} columns is expected")
        columns = [c.strip() for c in header]
        index = {}
        for field, setting in zip((text_field, label_field), settings):
            if field is None:
                continue
            if field not in columns:
                raise SourceError(f"{path} has no column {field!r} (columns: {', '.join(columns)}); "
                                  f"set {setting} to one of them")
            index[field] = columns.index(field)
        texts, labels = [], []
        for row_number, row in enumerate(reader, 1):
            if not row or (len(row) == 1 and not row[0].strip() and len(columns) > 1):
                continue  # blank line
            where = f"{path} row {row_number} (line {reader.line_num})"
            values = {f: (row[i] if i < len(row) else None) for f, i in index.items()}
            texts.append(_check_text(values[text_field], where, text_field))
            if label_field is not None:
                labels.append(_check_label(values[label_field], where, label_field))
    except csv.Error as e:
        raise SourceError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quoting") from None
    return texts, labels


def _read_jsonl(path: Path, text_field: str, label_field: str | None, settings=_DATA_SETTINGS):
    texts, labels = [], []
    for lineno, line in enumerate(_decode(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{where} is not valid JSON ({e.msg}); one object per line expected") from None
        if not isinstance(record, dict):
            raise SourceError(f"{where} holds a JSON {type(record).__name__}, not an object; "
                              "one object per line expected")
        for field, setting in zip((text_field, label_field), settings):
            if field is not None and field not in record:
                raise SourceError(f"{where} has no field {field!r} (fields: {', '.join(map(str, record))}); "
                                  f"set {setting} to one of them")
        texts.append(_check_text(record[text_field], where, text_field))
        if label_field is not None:
            labels.append(_check_label(record[label_field], where, label_field))
    return texts, labels


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _read_tfds(args: str, spec: str, text_field: str, label_field: str | None, settings=_DATA_SETTINGS):
    name, sep, split = args.partition(":")  # dataset names hold no ':'; a split slice may
    if not sep or not name or not split:
        raise SourceError(f"tfds spec {spec!r} needs a dataset and a split: 'tfds:name/config:split'")
    try:
        import tensorflow_datasets as tfds  # imported lazily: it is slow to import
    except ImportError:
        raise SourceError(f"{spec!r} needs tensorflow-datasets; install it with pip "
                          "(TensorFlow itself is not needed)") from None
    try:
        source = tfds.data_source(name, split=split, builder_kwargs={"file_format": "array_record"})
    except Exception as e:  # tfds raises many types: not found, not prepared, bad split
        raise SourceError(f"cannot open {spec!r} ({_first_line(e)}); prepare it first with "
                          f"tfds.builder({name!r}, file_format='array_record').download_and_prepare()") from None
    n = len(source)
    if n == 0:
        raise SourceError(f"{spec!r} holds no examples; check the split")
    first = source[0]
    for field, setting in zip((text_field, label_field), settings):
        if field is not None and field not in first:
            raise SourceError(f"{spec!r} has no feature {field!r} (features: {', '.join(map(str, first))}); "
                              f"set {setting} to one of them")
    texts, labels = [], []
    for i in range(n):
        record = first if i == 0 else source[i]
        where = f"{spec} example {i}"
        texts.append(_check_text(_scalar(record[text_field], where), where, text_field))
        if label_field is not None:
            labels.append(_check_label(_scalar(record[label_field], where), where, label_field))
    return texts, labels


def _scalar(value, where: str):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"{where}: bytes are not UTF-8 text; this feature cannot be used as text") from None
    return value


def _read_builtin(args: str, spec: str):
    dataset, _, split = args.partition("/")
    known = prepared.BUILTIN_LABELED.get(dataset)
    if known is None or split not in known.splits:
        choices = "; ".join(f"builtin:{name}/SPLIT with SPLIT in {', '.join(d.splits)}"
                            for name, d in prepared.BUILTIN_LABELED.items())
        raise SourceError(f"unknown builtin labeled data {spec!r}; use {choices}")
    try:
        texts, ids = prepared.load_builtin_split(dataset, split)
    except prepared.NotPreparedError as e:
        raise SourceError(str(e)) from None
    return texts, [known.label_names[i] for i in ids.tolist()]


# --- label vocabulary ----------------------------------------------------------------------------


def _canonical(label) -> str:
    """The string a raw label is known by: ``1``, ``1.0`` and ``"1"`` are all ``"1"``."""
    if isinstance(label, bool):
        return str(label).lower()
    if isinstance(label, numbers.Integral):
        return str(int(label))
    if isinstance(label, float):
        return str(int(label)) if label.is_integer() else repr(label)
    label = str(label).strip()
    return str(int(label)) if _INT_RE.fullmatch(label) else label


def _label_names(canonical_train: list[str], fixed: tuple[str, ...] | None) -> list[str]:
    unique = set(canonical_train)
    if fixed is not None:
        extra = sorted(unique - set(fixed))
        if extra:
            raise SourceError(f"training labels {extra} are not among the built-in labels {list(fixed)}")
        return list(fixed)
    if all(_INT_RE.fullmatch(u) for u in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _to_ids(canonical: list[str], names: list[str], spec: str, role: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted({c for c in canonical if c not in index})
    if unseen:
        count = sum(c not in index for c in canonical)
        raise SourceError(f"{role} label {unseen[0]!r} in {spec} never appears in the training data "
                          f"(training labels: {names}; {count} {role} example(s) with unseen labels "
                          f"{unseen[:10]}); fix the labels or drop those rows")
    return np.asarray([index[c] for c in canonical], dtype=np.int32)


# --- sampling --------------------------------------------------------------------------------------


def _allocate(total: int, capacity: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` units over classes in proportion to integer ``weights`` (largest remainder,
    ties to the lower class id), never above ``capacity``; what a full class cannot take goes to
    the others. Requires ``total <= capacity.sum()``."""
    capacity = np.asarray(capacity, dtype=np.int64)
    alloc = np.zeros_like(capacity)
    left = int(total)
    while left > 0:
        room = capacity - alloc
        w = np.where(room > 0, np.asarray(weights, dtype=np.int64), 0)
        if w.sum() == 0:
            w = (room > 0).astype(np.int64)
        share, frac = np.divmod(left * w, w.sum())
        rest = left - int(share.sum())
        order = np.argsort(-frac, kind="stable")
        for c in order[:rest]:
            share[c] += 1  # rest < number of classes with frac > 0, all of which have room
        give = np.minimum(share, room)
        alloc += give
        left -= int(give.sum())
    return alloc


def validation_size(budget_counts: np.ndarray, fraction: float, max_validation: int) -> np.ndarray:
    """Per-class validation counts [C] carved out of a budget of ``budget_counts`` [C] examples per class:
    ``round(fraction * budget)`` in all, at least one per class when ``fraction`` > 0, at most
    ``max_validation``, and every class keeps at least one training example. Stratified (largest remainder)."""
    budget_counts = np.asarray(budget_counts, dtype=np.int64)
    if fraction <= 0:
        return np.zeros_like(budget_counts)
    total = int(round(fraction * int(budget_counts.sum())))
    total = max(total, int((budget_counts > 1).sum()))  # one per class that can spare one
    capacity = np.maximum(budget_counts - 1, 0)
    total = min(total, int(max_validation), int(capacity.sum()))
    counts = _allocate(total, capacity, budget_counts)
    # Largest-remainder shares can leave a small class at 0 although another has more than one.
    for c in np.flatnonzero((counts == 0) & (capacity > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[c] += 1
    return counts


def _select(labels: np.ndarray, num_classes: int, num_labeled: int, fraction: float, max_validation: int,
            seed: int):
    """Indices (sorted) of the labeled training subset, the validation carve-out and the rest (outside
    the budget). The budget is ``num_labeled`` class-balanced examples (0 = all); validation is part of it."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    counts = np.asarray([len(p) for p in per_class], dtype=np.int64)
    budget_counts = counts if num_labeled == 0 else _allocate(num_labeled, counts, np.ones_like(counts))
    val_counts = validation_size(budget_counts, fraction, max_validation)
    train = np.concatenate([p[: k - v] for p, k, v in zip(per_class, budget_counts, val_counts)])
    val = np.concatenate([p[k - v: k] for p, k, v in zip(per_class, budget_counts, val_counts)])
    rest = np.concatenate([p[k:] for p, k in zip(per_class, budget_counts)])
    return (np.sort(train).astype(np.int64), np.sort(val).astype(np.int64), np.sort(rest).astype(np.int64))


def _split(texts: list[str], labels: np.ndarray, idx: np.ndarray | None = None) -> LabeledSplit:
    if idx is None:
        return LabeledSplit(list(texts), np.asarray(labels, dtype=np.int32))
    return LabeledSplit([texts[i] for i in idx], np.asarray(labels, dtype=np.int32)[idx])


def _int_setting(data_cfg, key: str, default: int) -> int:
    value = data_cfg.get(key, default)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < 0:
        raise SourceError(f"data.{key} = {value!r} must be a whole number >= 0")
    return int(value)


def labeled_specs(data_cfg) -> tuple[str, str]:
    """The (train, test) specs that ``data_cfg`` selects: ``data.train`` / ``data.test`` when given (both
    are needed), else the built-in ``data.name`` (default, "" : Rotten Tomatoes). A name and files set
    together is an error: one of them would be ignored."""
    name = data_cfg.get("name", "") or ""
    train_spec, test_spec = data_cfg.get("train", "") or "", data_cfg.get("test", "") or ""
    if name and name not in prepared.BUILTIN_LABELED:
        raise SourceError(f"unknown labeled dataset data.name={name!r}; use one of "
                          f"{', '.join(map(repr, prepared.BUILTIN_LABELED))}, or leave "
                          "data.name empty and give data.train / data.test specs")
    if name and (train_spec or test_spec):
        given = " and ".join(f"data.{k}" for k, v in (("train", train_spec), ("test", test_spec)) if v)
        raise SourceError(f"both data.name={name!r} and {given} are set; clear one: --config.data.name= to use "
                          f"your files, or drop {given} to use the built-in dataset")
    if not (train_spec or test_spec):
        return f"builtin:{name or _BUILTIN_RT}/train", f"builtin:{name or _BUILTIN_RT}/test"
    for key, spec in (("train", train_spec), ("test", test_spec)):
        if not spec:
            other = "test" if key == "train" else "train"
            raise SourceError(f"data.{other} is set but data.{key} is empty; set data.{key} to one of "
                              f"{_SPEC_HELP} too")
    return train_spec, test_spec


def check_budget_settings(data_cfg) -> tuple[float, int]:
    """(validation_fraction, max_validation) of ``data_cfg``; raises SourceError for the removed
    ``num_validation`` and for values out of range."""
    if "num_validation" in data_cfg:
        raise SourceError(REMOVED_NUM_VALIDATION)
    defaults = finetune_config().data  # for a plain dict data_cfg without the fields
    fraction = data_cfg.get("validation_fraction", defaults.validation_fraction)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise SourceError(f"data.validation_fraction = {fraction!r} must be a number in [0, 1) (the share of "
                          "data.num_labeled kept for validation; 0 = none, the last step is kept)")
    return float(fraction), _int_setting(data_cfg, "max_validation", defaults.max_validation)


def load_labeled(data_cfg, seed: int) -> LabeledData:
    """Load train/validation/test for fine-tuning from ``data_cfg`` (a ConfigDict or dict).

    Fields (all optional, extra fields ignored): ``train`` and ``test`` specs, or ``name``
    ("rotten_tomatoes", also what "" means when no specs are given; see ``labeled_specs``),
    ``text_field`` ("text"), ``label_field`` ("label"), ``num_labeled`` (0 = all),
    ``validation_fraction`` (0.2), ``max_validation`` (500), ``validation`` ("" or a spec).
    ``num_validation`` (removed) is an error.

    The budget is a class-balanced sample of ``num_labeled`` examples (equal per class, the remainder
    to the lowest class ids; a class with too few examples gives all it has and the others fill in).
    ``validation`` is a stratified carve-out of the budget (``validation_size``) and ``train`` the rest
    of it; with an explicit ``validation`` spec nothing is carved out and that file is the validation
    set (its labels count in ``labels_used``). Deterministic for a given ``seed``.
    """
    train_spec, test_spec = labeled_specs(data_cfg)
    text_field = data_cfg.get("text_field", "text") or "text"
    label_field = data_cfg.get("label_field", "label") or "label"
    num_labeled = _int_setting(data_cfg, "num_labeled", 0)
    fraction, max_validation = check_budget_settings(data_cfg)
    validation_spec = data_cfg.get("validation", "") or ""

    train_texts, train_raw = read_labeled(train_spec, text_field, label_field)
    test_texts, test_raw = read_labeled(test_spec, text_field, label_field)
    fixed = None  # a built-in set keeps its own label order (Rotten Tomatoes: rotten=0, fresh=1)
    if train_spec.startswith("builtin:"):
        builtin = prepared.BUILTIN_LABELED.get(train_spec[len("builtin:"):].partition("/")[0])
        fixed = builtin.label_names if builtin else None
    train_canon = [_canonical(x) for x in train_raw]
    label_names = _label_names(train_canon, fixed)
    present = len(set(train_canon))
    if present < 2:
        raise SourceError(f"the training data {train_spec} has {present} class(es) {sorted(set(train_canon))} "
                          f"in {label_field!r}; classification needs at least 2 (check data.label_field)")
    train_labels = _to_ids(train_canon, label_names, train_spec, "training")
    test_labels = _to_ids([_canonical(x) for x in test_raw], label_names, test_spec, "test")

    available = len(train_texts)
    if num_labeled and num_labeled < present:
        raise SourceError(f"data.num_labeled={num_labeled} is smaller than the {present} classes in "
                          f"{train_spec}; use at least {present} (or 0 for all)")
    if num_labeled > available:
        raise SourceError(f"data.num_labeled={num_labeled} is larger than the {available} training "
                          f"examples in {train_spec}; use at most {available} (or 0 for all)")
    train_idx, val_idx, rest_idx = _select(train_labels, len(label_names), num_labeled,
                                           0.0 if validation_spec else fraction, max_validation, seed)
    if validation_spec:
        val_texts, val_raw = read_labeled(validation_spec, text_field, label_field)
        validation = LabeledSplit(val_texts, _to_ids([_canonical(x) for x in val_raw], label_names,
                                                     validation_spec, "validation"))
    else:
        validation = _split(train_texts, train_labels, val_idx)
    # The unlabeled pool: texts only, and never a text of the test split (self-training must not see test).
    test_set = set(test_texts)
    unlabeled = [train_texts[i] for i in rest_idx if train_texts[i] not in test_set]
    return LabeledData(
        train=_split(train_texts, train_labels, train_idx),
        validation=validation,
        test=_split(test_texts, test_labels),
        label_names=list(label_names),
        num_train_available=available,
        unlabeled=unlabeled,
        extra_validation=bool(validation_spec),
    )
