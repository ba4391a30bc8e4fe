"""Character vocabulary over Unicode code points.

Id 0 is reserved for ``<unk>``: characters never seen in the training split
map there (policy ``unk``) or raise (policy ``error``), never silently to a
real character. Real characters follow in code-point order, so the vocabulary
is a pure function of the set of training characters.

Encoding is vectorised through a code-point lookup table, which is what makes
tokenising a 100 MB corpus take seconds rather than minutes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.errors import CorpusError
from charrnn.fsutil import atomic_write_json

UNK_TOKEN = "<unk>"
UNK_ID = 0
UNK_DISPLAY = "\ufffd"  # how <unk> is shown when decoding
MAX_CODEPOINT = 0x110000
VOCAB_FORMAT = 1


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as a NumPy array (uint8 for ASCII, else uint32)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def multibyte_chars(utf8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(byte offsets of the lead bytes, code points) of the multi-byte characters in valid UTF-8.

    Vectorised over the characters' lead bytes, usually few: no per-character Python.
    """
    lead = np.flatnonzero(utf8 >= 0xC0)  # lead bytes of 2-, 3- and 4-byte characters
    b0 = utf8[lead].astype(np.uint32)
    length = _sequence_length(b0)
    last = utf8.size - 1
    b1, b2, b3 = (utf8[np.minimum(lead + k, last)].astype(np.uint32) & 0x3F for k in (1, 2, 3))
    value = np.where(
        length == 2,
        (b0 & 0x1F) << 6 | b1,
        np.where(
            length == 3,
            (b0 & 0x0F) << 12 | b1 << 6 | b2,
            (b0 & 0x07) << 18 | b1 << 12 | b2 << 6 | b3,
        ),
    )
    return lead, value


def _sequence_length(lead_byte: np.ndarray) -> np.ndarray:
    return 2 + (lead_byte >= 0xE0) + (lead_byte >= 0xF0)


def is_char_start(utf8: np.ndarray) -> np.ndarray:
    return (utf8 & 0xC0) != 0x80  # every byte but a continuation byte starts a character


def utf8_codepoints(utf8: np.ndarray) -> np.ndarray:
    """Decode valid UTF-8 bytes (uint8) to code points, vectorised.

    ASCII comes back as-is (uint8, zero copy); otherwise uint32, ~10x faster than
    ``bytes.decode`` + ``str.encode("utf-32")`` on mostly-ASCII text. The input must
    be valid UTF-8 (a corpus is validated at fetch).
    """
    if utf8.max(initial=0) < 0x80:
        return utf8
    lead, value = multibyte_chars(utf8)
    # one entry per character, lead bytes in place
    cps = utf8[is_char_start(utf8)].astype(np.uint32)
    continuation = _sequence_length(utf8[lead]) - 1
    # each value goes at its lead byte's index among the characters
    cps[lead - (np.cumsum(continuation) - continuation)] = value
    return cps


def unseen_characters(cps: np.ndarray, bad: np.ndarray, limit: int = 10) -> str:
    """Which characters are not in the vocabulary, and where each first occurs.

    The characters are the code points ``cps[bad]``.
    """
    values, first = np.unique(cps[bad], return_index=True)
    newlines = np.flatnonzero(cps == 10)
    parts = []
    for i in np.argsort(first)[:limit]:
        pos = int(bad[first[i]])
        line = int(np.searchsorted(newlines, pos))  # newlines before pos
        column = pos - (int(newlines[line - 1]) if line else -1)
        ch = chr(int(values[i]))
        parts.append(
            f"{ch!r} (U+{ord(ch):04X}) first at line {line + 1}, column {column} (position {pos})"
        )
    more = f", and {len(values) - limit} more" if len(values) > limit else ""
    return (
        f"{len(values)} character(s) not in the vocabulary ({bad.size} occurrence(s)): "
        f"{'; '.join(parts)}{more}"
    )


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # real characters in code-point order; id = index + 1

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> Vocab:
        """Build from a histogram indexed by code point."""
        return cls(tuple(chr(cp) for cp in np.flatnonzero(counts)))

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def __len__(self) -> int:
        return self.size

    def _table(self) -> np.ndarray:
        """Code point -> id (UNK_ID where unseen), built once and cached on the frozen instance."""
        lut = self.__dict__.get("_lut")
        if lut is None:
            lut = np.zeros(MAX_CODEPOINT, dtype=np.uint32)
            lut[[ord(c) for c in self.chars]] = np.arange(1, self.size, dtype=np.uint32)
            object.__setattr__(self, "_lut", lut)
        return lut

    def encode_codepoints(
        self, cps: np.ndarray, *, dtype=np.int64, unk_policy: str = "unk", source: str = "text"
    ) -> np.ndarray:
        lut = self._table()
        ids = lut[:256].astype(dtype)[cps] if cps.dtype == np.uint8 else lut[cps]
        # a library guard: the config only lets these two through
        if unk_policy not in ("unk", "error"):
            raise CorpusError(
                f"unknown unk_policy {unk_policy!r}",
                where="data.unk_policy",
                fix="use unk or error",
            )
        if unk_policy == "error" and self.size > 1:
            bad = np.flatnonzero(ids == UNK_ID)
            if bad.size:
                raise CorpusError(
                    unseen_characters(cps, bad),
                    where=source,
                    fix="use data.unk_policy=unk to map them to <unk>, "
                    "or a model trained on text that has them",
                )
        return ids.astype(dtype, copy=False)

    def encode_utf8(self, utf8: np.ndarray, *, dtype=np.int64) -> np.ndarray:
        """Ids of valid UTF-8 bytes without decoding them to code points first (<unk> for unseen).

        A 256-entry table maps every byte (cache-resident: ~2x faster than the full
        table); then the few multi-byte characters get their ids by code point and
        their continuation bytes are dropped.
        """
        lut = self._table()
        ids = lut[:256].astype(dtype)[utf8]
        if utf8.max(initial=0) < 0x80:
            return ids
        lead, value = multibyte_chars(utf8)
        ids[lead] = lut[value]
        return ids[is_char_start(utf8)]

    def encode(self, text: str, **kwargs) -> np.ndarray:
        return self.encode_codepoints(codepoints(text), **kwargs)

    def decode(self, ids) -> str:
        table = (UNK_DISPLAY, *self.chars)
        return "".join(table[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "unk_token": UNK_TOKEN,
            "unk_id": UNK_ID,
            "chars": list(self.chars),
        }

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        if obj.get("format") != VOCAB_FORMAT or obj.get("unk_id") != UNK_ID:
            raise CorpusError("unsupported vocabulary format", fix="re-run `charrnn prepare`")
        return cls(tuple(obj["chars"]))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def token_dtype_for(
    vocab_size: int, requested: str = "auto", *, source: str = "data.token_dtype"
) -> np.dtype:
    """The smallest unsigned dtype holding every id, or the requested one if it fits."""
    options = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
    if requested == "auto":
        return np.dtype(next(t for t in options.values() if vocab_size <= np.iinfo(t).max + 1))
    if requested not in options:
        raise CorpusError(
            f"unknown token dtype {requested!r}",
            where=source,
            fix="use auto, uint8, uint16 or uint32",
        )
    dtype = np.dtype(options[requested])
    if vocab_size > np.iinfo(dtype).max + 1:
        raise CorpusError(
            f"vocabulary of {vocab_size} symbols ({vocab_size - 1} characters + <unk>) "
            f"does not fit {requested} (at most {np.iinfo(dtype).max + 1})",
            where=source,
            fix="set data.token_dtype=auto (or a wider dtype such as uint16)",
        )
    return dtype
