"""Tokenisation: corpus text -> vocabulary + contiguous train/val/test token files.

The corpus is read through HF ``datasets`` (the ``text`` builder with
``keep_linebreaks=True``: its default drops the newlines a character model
must see). Its Arrow string buffers are already the concatenated UTF-8 text,
so we take them zero-copy and count and encode them with NumPy in ~16 MB
blocks rather than row by row: memory stays flat in the corpus size.

Output, content-addressed by (corpus sha256, split fractions, dtype, format)::

    <cache>/tokens/<key>/vocab.json  train.bin  val.bin  test.bin  meta.json

``*.bin`` are raw arrays of ``meta["dtype"]``, read with :func:`load_split` as
read-only memmaps, so any number of training ranks share one copy in the page
cache. The directory is built under a temporary name and renamed into place
under a lock: concurrent prepares do the work once, and a crash leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from charrnn.data.corpus import CorpusRef, cache_root
from charrnn.data.vocab import (
    MAX_CODEPOINT,
    Vocab,
    is_char_start,
    multibyte_chars,
    token_dtype_for,
    utf8_codepoints,
)
from charrnn.errors import CorpusError
from charrnn.fsutil import atomic_write_json, file_lock, fsync_dir, sha256_bytes

TOKENS_FORMAT = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TokenSet:
    """A prepared dataset on disk (small, JSON-able)."""

    dir: str
    key: str
    corpus_sha256: str
    vocab_size: int
    dtype: str
    num_tokens: dict[str, int]
    cache_hit: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def vocab(self) -> Vocab:
        return Vocab.load(Path(self.dir) / "vocab.json")


def tokens_key(
    corpus_sha256: str, val_fraction: float, test_fraction: float, token_dtype: str
) -> str:
    settings = {
        "corpus_sha256": corpus_sha256,
        "val_fraction": round(val_fraction, 12),
        "test_fraction": round(test_fraction, 12),
        "token_dtype": token_dtype,
        "format": TOKENS_FORMAT,
    }
    return sha256_bytes(json.dumps(settings, sort_keys=True).encode())[:24]


def split_sizes(n: int, val_fraction: float, test_fraction: float, source: str) -> dict[str, int]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CorpusError(
            f"bad split fractions val={val_fraction} test={test_fraction}",
            where="data.val_fraction / data.test_fraction",
            fix="use fractions in [0, 1) that sum to less than 1",
        )
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and sizes[split] < 2:
            raise CorpusError(
                f"corpus of {n} characters is too short for a {split} split of {fraction:g}",
                where=source,
                fix=f"use a longer corpus or a larger data.{split}_fraction",
            )
    return sizes


def check_trainable(num_train: int, batch_size: int, seq_len: int, source: str) -> None:
    """Training needs at least one (seq_len + 1)-character window per stream.

    That follows from :class:`~charrnn.data.batches.StreamBatcher`'s layout. The rule
    lives here, not in ``data`` (which imports torch), so ``prepare`` and the flow can
    refuse a corpus before caching it or starting torchrun.
    """
    need = batch_size * (seq_len + 1)
    if num_train < need:
        raise CorpusError(
            f"training split has {num_train} characters; batch_size={batch_size} streams x "
            f"(seq_len={seq_len} + 1) needs at least {need}",
            where=source,
            fix="use a longer corpus, or lower train.batch_size / train.seq_len",
        )


# work in ~16 MB blocks: big enough for vectorised speed, small enough for flat memory
BLOCK_BYTES = 16 << 20
# up to this size the corpus is one Arrow row (fast); above, one row per line
DOCUMENT_MODE_MAX_BYTES = 512 << 20


class Utf8Blocks:
    """The corpus as blocks of about ``BLOCK_BYTES`` of UTF-8, with their character counts.

    The blocks are re-iterable. The corpus is read through HF ``datasets`` once (the
    ``text`` builder, newlines kept). Its Arrow string buffers, memory-mapped from the
    builder's cache, are already the concatenated UTF-8 text, so blocks are zero-copy
    views (only rows shorter than a block are joined), cut only at character
    boundaries. Nothing ever holds more than a block's worth of decoded text.
    """

    def __init__(self, corpus_path: str, scratch: str):
        import datasets  # slow import: only when tokenising

        datasets.disable_progress_bars()
        whole = os.path.getsize(corpus_path) <= DOCUMENT_MODE_MAX_BYTES
        self._dataset = datasets.load_dataset(
            "text",
            data_files=corpus_path,
            # "document": one row, no per-line Python strings (3x faster); "line" bounds
            # the builder's memory for huge corpora. Either way keep_linebreaks: the
            # default strips "\n".
            sample_by="document" if whole else "line",
            keep_linebreaks=True,
            split="train",
            cache_dir=scratch,  # private cache: no races with other processes' datasets cache
        )
        self.chars_per_block = [int(np.count_nonzero(is_char_start(raw))) for raw in self]
        self.num_chars = sum(self.chars_per_block)

    def __iter__(self):
        """Raw UTF-8 blocks of at most ~BLOCK_BYTES.

        Each block starts and ends on a character boundary.
        """
        pending, pending_bytes = [], 0
        for arr in self._dataset.data.column("text").chunks:
            offsets_type = np.int64 if str(arr.type) == "large_string" else np.int32
            offsets = np.frombuffer(arr.buffers()[1], dtype=offsets_type)[
                arr.offset : arr.offset + len(arr) + 1
            ]
            raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            # a row always ends on a character boundary; inside one, cut before a lead byte
            while raw.size:
                cut = min(raw.size, BLOCK_BYTES - pending_bytes)
                while cut < raw.size and raw[cut] & 0xC0 == 0x80:
                    cut += 1
                pending.append(raw[:cut])
                pending_bytes += cut
                raw = raw[cut:]
                if pending_bytes >= BLOCK_BYTES:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, pending_bytes = [], 0
        if pending:
            yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def count_chars(blocks: Utf8Blocks, num_chars: int) -> np.ndarray:
    """Histogram by code point of the first ``num_chars`` characters.

    Whole blocks are counted from their bytes (ASCII) plus their few multi-byte
    characters, without decoding; only the block the boundary cuts is decoded.
    """
    counts = np.zeros(MAX_CODEPOINT, dtype=np.int64)
    pos = 0
    for raw, size in zip(blocks, blocks.chars_per_block, strict=True):
        if pos >= num_chars:
            break
        if pos + size <= num_chars:
            counts[:0x80] += np.bincount(raw, minlength=256)[:0x80]
            values = multibyte_chars(raw)[1]
        else:
            values = utf8_codepoints(raw)[: num_chars - pos]
        if values.size:
            hist = np.bincount(values)
            counts[: hist.size] += hist
        pos += size
    return counts


def prepare_tokens(
    corpus: CorpusRef,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    token_dtype: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> TokenSet:
    """Tokenise ``corpus`` into the cache, or return the existing entry (a cache hit)."""
    root = cache_root(cache_dir) / "tokens"
    key = tokens_key(corpus.sha256, val_fraction, test_fraction, token_dtype)
    final = root / key
    with file_lock(root / f".{key}.lock"):
        if (final / "meta.json").exists():
            return _token_set(final, cache_hit=True)
        started = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            _build(corpus, work, val_fraction, test_fraction, token_dtype, key, started)
            if final.exists():  # a stale, incomplete entry (no meta.json): replace it
                shutil.rmtree(final)
            os.rename(work, final)
            fsync_dir(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _token_set(final, cache_hit=False)


def _build(
    corpus: CorpusRef,
    out: Path,
    val_fraction: float,
    test_fraction: float,
    token_dtype: str,
    key: str,
    started: float,
) -> None:
    with tempfile.TemporaryDirectory(prefix="charrnn-datasets-") as scratch:
        blocks = Utf8Blocks(corpus.path, scratch)
        sizes = split_sizes(blocks.num_chars, val_fraction, test_fraction, corpus.uri)
        # Vocabulary from the training split only: val/test characters it lacks become <unk>.
        vocab = Vocab.from_counts(count_chars(blocks, sizes["train"]))
        dtype = token_dtype_for(vocab.size, token_dtype, source=f"{corpus.uri} (data.token_dtype)")

        meta = {
            "format": TOKENS_FORMAT,
            "key": key,
            "corpus_uri": corpus.uri,
            "corpus_sha256": corpus.sha256,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "vocab_size": vocab.size,
            "dtype": dtype.name,
            "num_tokens": sizes,
            "num_unk": {},
        }
        files = {split: open(out / f"{split}.bin", "wb") for split in SPLITS}  # noqa: SIM115 (closed below)
        try:
            # One pass over the corpus, each block encoded once and cut at the split boundaries.
            bounds = np.cumsum([0] + [sizes[s] for s in SPLITS])
            unk = dict.fromkeys(SPLITS, 0)
            pos = 0
            for block in blocks:
                ids = vocab.encode_utf8(block, dtype=dtype)
                for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
                    part = ids[max(lo - pos, 0) : max(min(hi - pos, ids.size), 0)]
                    if part.size:
                        unk[split] += int(np.count_nonzero(part == 0))
                        part.tofile(files[split])
                pos += ids.size
            for fh in files.values():
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            for fh in files.values():
                fh.close()
        meta["num_unk"] = unk
    vocab.save(out / "vocab.json")
    meta["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a complete entry


def _token_set(path: Path, *, cache_hit: bool) -> TokenSet:
    meta = json.loads((path / "meta.json").read_text())
    return TokenSet(
        dir=str(path),
        key=meta["key"],
        corpus_sha256=meta["corpus_sha256"],
        vocab_size=meta["vocab_size"],
        dtype=meta["dtype"],
        num_tokens=meta["num_tokens"],
        cache_hit=cache_hit,
    )


def open_token_set(path: str | os.PathLike[str]) -> TokenSet:
    path = Path(path)
    if not (path / "meta.json").exists():
        raise CorpusError(
            "not a prepared token directory (no meta.json)",
            where=str(path),
            fix="run `charrnn prepare`",
        )
    return _token_set(path, cache_hit=True)


def load_split(tokens: TokenSet, split: str) -> np.ndarray:
    """A read-only memmap of one split (an empty array for an empty split)."""
    if tokens.num_tokens[split] == 0:
        return np.zeros(0, dtype=tokens.dtype)
    return np.memmap(Path(tokens.dir) / f"{split}.bin", dtype=tokens.dtype, mode="r")
