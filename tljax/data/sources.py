"""Document sources for pretraining: ``text:``, ``jsonl:``, ``tfds:`` and ``builtin:`` specs.

A source spec is a string ``KIND:ARGS``:
- ``text:/books/*.txt`` — plain text files (comma-separated globs); each blank-line-separated block is a
  document.
- ``jsonl:/data/*.jsonl`` or ``jsonl:/data/*.jsonl@body`` — one JSON object per line, text in the field
  after ``@`` (default ``text``).
- ``csv:/data/train.csv`` or ``csv:/data/*.csv@review`` — the text column of CSV files with a header row
  (e.g. a labeled set's; the other columns are not read), column after ``@`` (default ``text``).
- ``tfds:name/config:split`` or ``tfds:name:split@field`` — a TFDS dataset read through
  ``tfds.data_source`` on array_record files (no TensorFlow); field default ``text``.
- ``builtin:corpus`` / ``builtin:corpus_eval`` — the embedded offline corpus (``tljax data prepare``).
- ``builtin:rotten_tomatoes_train_text`` — the task's own unlabeled text for task-adaptive pretraining: the
  review texts of the Rotten Tomatoes training split and the plot synopses of the corpus's training part;
  any text of the validation or test split is dropped, so it cannot yield one.
- ``builtin:chinese_reviews_train_text`` (``builtin:<set>_train_text`` for each built-in labeled set) — the texts of its training
  split, any text of the test split dropped.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import itertools
import json
import math
import os
import zlib
from pathlib import Path
from typing import Iterator

from tljax.data import prepared
from tljax.utils import log


class SourceError(ValueError):
    """A data source spec that cannot be read; the message names the spec and the fix."""


def _split_field(args: str, default: str = "text") -> tuple[str, str]:
    if "@" in args:
        args, field = args.rsplit("@", 1)
        return args, field
    return args, default


def resolve_files(patterns: str) -> list[Path]:
    """Comma-separated globs -> sorted existing files. Raises SourceError when nothing matches."""
    files: list[Path] = []
    for pattern in patterns.split(","):
        pattern = os.path.expanduser(pattern.strip())
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise SourceError(f"no file matches {pattern!r}; check the path in data.source")
        files.extend(Path(m) for m in matched if Path(m).is_file())
    if not files:
        raise SourceError(f"{patterns!r} matches only directories; use a glob such as 'dir/*.txt'")
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not UTF-8 text (byte {e.start}); convert it with iconv first") from None


def _text_documents(patterns: str) -> Iterator[str]:
    for path in resolve_files(patterns):
        for block in _read_text(path).split("\n\n"):
            block = block.strip()
            if block:
                yield block


def _jsonl_documents(args: str) -> Iterator[str]:
    patterns, field = _split_field(args)
    for path in resolve_files(patterns):
        for lineno, line in enumerate(_read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{lineno} is not valid JSON ({e.msg}); one object per line expected")
            if field not in record:
                raise SourceError(f"{path}:{lineno} has no field {field!r}; name it with 'jsonl:{patterns}@FIELD'")
            if record[field]:
                yield str(record[field])


def _csv_documents(args: str) -> Iterator[str]:
    patterns, field = _split_field(args)
    for path in resolve_files(patterns):
        reader = csv.reader(io.StringIO(_read_text(path).lstrip("\ufeff"), newline=""))
        try:
            header = [c.strip() for c in next(reader, [])]
            if field not in header:
                raise SourceError(f"{path} has no column {field!r} (columns: {', '.join(header) or 'none'}); "
                                  f"name the text column with 'csv:{patterns}@COLUMN'")
            column = header.index(field)
            for row in reader:
                if column < len(row) and row[column].strip():
                    yield row[column]
        except csv.Error as e:
            raise SourceError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quoting") from None


def _tfds_documents(args: str) -> Iterator[str]:
    args, field = _split_field(args)
    if ":" not in args:
        raise SourceError(f"tfds source {args!r} needs a split: 'tfds:name/config:split'")
    name, split = args.rsplit(":", 1)
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import
    if name.split("/")[0] == "tljax_corpus":
        from tljax.data import tfds_corpus  # noqa: F401  registers the builder
    source = tfds.data_source(name, split=split, builder_kwargs={"file_format": "array_record"})
    for i in range(len(source)):
        value = source[i][field]
        yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


RT_TRAIN_TEXT = "rotten_tomatoes_train_text"
# builtin:<set>_train_text: the training texts of a built-in labeled set (task-adaptive pretraining's text)
TRAIN_TEXT = {f"{name}_train_text": name for name in prepared.BUILTIN_LABELED}
BUILTIN = ("corpus", "corpus_eval", *TRAIN_TEXT)


def builtin_train_text(dataset: str) -> Iterator[str]:
    """The training texts of the prepared built-in labeled set ``dataset``; a text that is also in one of its
    other splits (validation, test) is never yielded, so a leak is impossible, not just unlikely."""
    splits = prepared.BUILTIN_LABELED[dataset].splits
    try:
        held_out = {t for split in splits if split != "train" for t in prepared.load_builtin_split(dataset, split)[0]}
        train = prepared.load_builtin_split(dataset, "train")[0]
    except prepared.NotPreparedError as e:
        raise SourceError(str(e)) from None
    yield from (t for t in train if t not in held_out)


def rotten_tomatoes_train_text() -> Iterator[str]:
    """The Rotten Tomatoes training reviews (``builtin_train_text``), then the plot synopses (unlabeled) of
    the corpus's training part, except any synopsis equal to a validation or test text."""
    yield from builtin_train_text("rotten_tomatoes")
    held_out = {t for split in ("validation", "test") for t in prepared.load_rt_split(split)[0]}
    with open(prepared.corpus_paths()["train"], encoding="utf-8") as f:
        for line in f:
            if '"rt_plots"' not in line:  # cheap pre-filter: most lines are other sources
                continue
            record = json.loads(line)
            if record.get("source") == "rt_plots" and record["text"] and record["text"] not in held_out:
                yield record["text"]


def _builtin_documents(args: str) -> Iterator[str]:
    if args in TRAIN_TEXT:
        yield from rotten_tomatoes_train_text() if args == RT_TRAIN_TEXT else builtin_train_text(TRAIN_TEXT[args])
        return
    split = {"corpus": "train", "corpus_eval": "eval"}.get(args)
    if split is None:
        raise SourceError(f"unknown builtin source {args!r}; use one of " + ", ".join(f"'builtin:{b}'" for b in BUILTIN))
    paths = prepared.corpus_paths()  # the embedded offline corpus
    yield from _jsonl_documents(str(paths[split]))


_READERS = {"text": _text_documents, "jsonl": _jsonl_documents, "csv": _csv_documents, "tfds": _tfds_documents,
            "builtin": _builtin_documents}


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, args = spec.partition(":")
    if not sep or kind not in _READERS:
        raise SourceError(f"data source {spec!r} is not of the form KIND:ARGS with KIND in {sorted(_READERS)}")
    return kind, args


def check_spec(spec: str) -> None:
    """Raise SourceError now for what can be seen without reading the data: the form of the spec and, for
    ``csv:``, that every file has the column (its header row)."""
    kind, args = parse_spec(spec)
    if kind != "csv":
        return
    patterns, field = _split_field(args)
    for path in resolve_files(patterns):
        with open(path, encoding="utf-8-sig", newline="") as f:
            try:
                header = [c.strip() for c in next(csv.reader(f), [])]
            except (csv.Error, UnicodeDecodeError) as e:
                raise SourceError(f"{path} does not start with a CSV header row ({type(e).__name__}); "
                                  f"check that it is a UTF-8 CSV file") from None
        if field not in header:
            raise SourceError(f"{path} has no column {field!r} (columns: {', '.join(header) or 'none'}); "
                              f"name the text column with 'csv:{patterns}@COLUMN'")


def iter_documents(spec: str) -> Iterator[str]:
    """Yield the documents (non-empty strings) of a source spec, in a fixed order."""
    kind, args = parse_spec(spec)
    return _READERS[kind](args)


def stable_bucket(text: str, buckets: int = 1000) -> int:
    """A bucket in [0, buckets) from the text alone (crc32), stable across runs and machines."""
    return zlib.crc32(text.encode("utf-8")) % buckets


# Fractions taken by whole documents need enough documents to be near their target: with fewer than
# MIN_EXPECTED documents expected in the smaller side (e.g. one 1 MB novel, 1 % held out), the selection
# is made by CHUNK_CHARS pieces instead.
MIN_EXPECTED = 10
CHUNK_CHARS = 2000
_MAX_LOOKAHEAD = 20_000  # documents read ahead to decide; more than this always selects by document


def chunk_text(doc: str, size: int = CHUNK_CHARS) -> list[str]:
    """``doc`` cut into pieces of about ``size`` characters at line breaks (else at spaces, else anywhere),
    stripped, none empty. Joined back with whitespace they hold every word of ``doc`` in order."""
    pieces, current = [], ""
    for line in doc.splitlines(keepends=True):
        while len(line) > size:  # one long line (a paragraph per line): cut at the last space before size
            cut = line.rfind(" ", 0, size)
            cut = size if cut <= 0 else cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:cut])
            line = line[cut:]
        if current and len(current) + len(line) > size:
            pieces.append(current)
            current = ""
        current += line
    pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _too_few(count: int, subsample: float, holdout: float) -> bool:
    """Whether ``count`` documents are too few to take these fractions by whole documents."""
    fractions = [f for f in (holdout, 1 - holdout) if 0 < f < 1 and holdout > 0]
    fractions += [f for f in (subsample, 1 - subsample) if 0 < f < 1]
    return any(count * f < MIN_EXPECTED for f in fractions)


def select_documents(docs, *, subsample: float = 1.0, holdout: float = 0.0, take_holdout: bool = False):
    """Deterministic selection: keep a ``subsample`` fraction, then either the part outside a ``holdout``
    fraction (training) or inside it (evaluation); the two are disjoint and together all that was kept.

    By document (text hash) when there are enough documents; when there are too few for the fractions to
    come out near their value (fewer than MIN_EXPECTED expected on a side: a single large text file, a
    handful of books), by ~CHUNK_CHARS pieces of the documents instead: a piece is kept by its hash, and
    every k-th kept piece (k = 1/holdout, evenly spread for any fraction) is held out. Says so in the log."""
    if subsample >= 1 and holdout <= 0:
        yield from docs
        return
    docs = iter(docs)
    ahead = []
    for doc in docs:
        ahead.append(doc)
        if len(ahead) >= _MAX_LOOKAHEAD or not _too_few(len(ahead), subsample, holdout):
            break
    else:  # the source ended while still too small: select by pieces
        yield from _select_chunks(ahead, subsample, holdout, take_holdout)
        return
    for doc in itertools.chain(ahead, docs):
        b = stable_bucket(doc)
        if b >= subsample * 1000:
            continue
        in_holdout = (zlib.crc32(doc.encode("utf-8")[::-1]) % 1000) < holdout * 1000
        if in_holdout == take_holdout:
            yield doc


def _select_chunks(docs: list[str], subsample: float, holdout: float, take_holdout: bool):
    if not docs:
        return
    pieces = [p for doc in docs for p in chunk_text(doc)]
    kept = [p for p in pieces if stable_bucket(p) < subsample * 1000] if subsample < 1 else pieces
    held = f", {math.floor(len(kept) * holdout)} evenly spread ones held out" if holdout > 0 else ""
    message = (f"data: {len(docs)} document(s) are too few to take fractions (subsample {subsample:g}, holdout "
               f"{holdout:g}) by whole documents; selecting among {len(pieces)} pieces of ~{CHUNK_CHARS} "
               f"characters instead ({len(kept)} kept{held})")
    if take_holdout or holdout <= 0:  # once per train/eval pair of selections
        log(message)
    for i, piece in enumerate(kept):
        # Piece i is held out when the running count of held-out pieces, floor((i + 1) * holdout), steps up:
        # exactly floor(n * holdout) of n pieces, evenly spread through the text.
        in_holdout = math.floor((i + 1) * holdout) > math.floor(i * holdout)
        if in_holdout == take_holdout:
            yield piece


def fingerprint(spec: str) -> str:
    """A hash of what a spec reads (file names, sizes, mtimes), for cache keys."""
    kind, args = parse_spec(spec)
    h = hashlib.sha1(spec.encode())
    if kind in ("text", "jsonl", "csv"):
        for path in resolve_files(args if kind == "text" else _split_field(args)[0]):
            st = path.stat()
            h.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    elif kind == "builtin":
        rt = []
        dataset = TRAIN_TEXT.get(args)
        if dataset:
            if not prepared.builtin_is_prepared(dataset):
                raise SourceError(f"{dataset} is not prepared in {prepared.builtin_dir(dataset)}; "
                                  "run `tljax data prepare`")
            rt = [prepared.builtin_dir(dataset) / f"{s}.jsonl" for s in prepared.BUILTIN_LABELED[dataset].splits]
        for path in [*prepared.corpus_paths().values(), *rt]:
            st = Path(path).stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
