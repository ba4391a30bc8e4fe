"""User-facing errors: each says what went wrong, where, and what to do."""

from __future__ import annotations


class CharRNNError(Exception):
    """An error caused by input or environment, reported without a traceback.

    ``where`` names the offending input (a URI, a file, a config key) and
    ``fix`` tells the user what to do about it.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what if where is None else f"{where}: {what}"]
        if fix:
            parts.append(f"  -> {fix}")
        super().__init__("\n".join(parts))


class CorpusError(CharRNNError):
    """The corpus could not be fetched, decoded or validated."""


class ConfigError(CharRNNError):
    """A configuration value is missing, malformed or inconsistent."""


class CheckpointError(CharRNNError):
    """No usable checkpoint: missing, corrupt, or incompatible."""


class DivergenceError(CharRNNError):
    """Training produced a non-finite loss or gradient."""


class PeerLostError(CharRNNError):
    """Another training process (or its machine) went away in the middle of a collective."""
