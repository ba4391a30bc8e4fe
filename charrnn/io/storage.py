"""Run directories at an fsspec URL (``s3://bucket/prefix/run``, ``gs://…``, ``memory://…``).

Training always works in a local staging directory (the same fast, atomic,
checksummed code path as a local run) and rank 0 *publishes* to the remote run
directory: each checkpoint object first, then its ``.sha256`` sidecar. An object
store makes an object visible only when its upload (single PUT or multipart)
has completed, so a sidecar that exists means a complete checkpoint, and a
checkpoint without one is ignored. On resume every rank pulls the newest remote
checkpoint whose checksum verifies into its staging directory, so a job can
resume on machines that never saw the first attempt.

Endpoint and credentials come from the backend's usual settings (for S3:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or an
instance role); they are never written to the run directory or the logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from charrnn.errors import CheckpointError, ConfigError
from charrnn.fsutil import atomic_path, file_lock, sha256_bytes, url_scheme
from charrnn.io.checkpoint import STEP_FILE, list_checkpoints, verify_checkpoint

log = logging.getLogger("charrnn")
SMALL_FILES = ("config.yaml", "vocab.json", "metrics.jsonl", "train_summary.json")


def is_remote(location: str | os.PathLike[str]) -> bool:
    return url_scheme(location) not in ("", "file")


def staging_dir(url: str) -> Path:
    """The local working copy of a remote run directory: stable per URL (restarts find it again)."""
    from charrnn.data.corpus import cache_root

    name = url.rstrip("/").rsplit("/", 1)[-1] or "run"
    return cache_root(None) / "runs" / f"{name}-{sha256_bytes(url.encode())[:12]}"


class RemoteRunDir:
    """A run directory at an fsspec URL, mirrored from a local staging directory."""

    def __init__(self, url: str):
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"cannot open {url}: {exc}",
                where="train.out_dir",
                fix=(
                    "install the fsspec backend for this scheme (s3fs for s3://, gcsfs for gs://)"
                ),
            ) from None
        self.url = url.rstrip("/")
        self.local = staging_dir(url)

    def _remote(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def publish_checkpoint(self, local_path: Path, *, as_name: str | None = None) -> None:
        """Upload a checkpoint, then its sidecar.

        The sidecar's existence marks a complete upload.
        """
        rel = (
            f"checkpoints/{as_name or local_path.name}"
            if local_path.parent.name == "checkpoints"
            else (as_name or local_path.name)
        )
        self.fs.put_file(str(local_path), self._remote(rel))
        self.fs.put_file(
            str(local_path.with_name(local_path.name + ".sha256")), self._remote(rel + ".sha256")
        )

    def publish_files(self, names: tuple[str, ...] = SMALL_FILES) -> None:
        for name in names:
            path = self.local / name
            if path.is_file():
                self.fs.put_file(str(path), self._remote(name))

    def prune(self, keep: set[str]) -> None:
        """Delete remote step checkpoints not in ``keep``.

        The sidecar goes first, so no half checkpoint looks complete.
        """
        for name in self.checkpoint_names():
            if name not in keep:
                for suffix in (".sha256", ""):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(self._remote(f"checkpoints/{name}{suffix}"))

    def checkpoint_names(self) -> list[str]:
        """Complete remote step checkpoints (those with a sidecar), oldest first."""
        try:
            names = [
                p.rsplit("/", 1)[-1] for p in self.fs.ls(self._remote("checkpoints"), detail=False)
            ]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if STEP_FILE.match(n) and f"{n}.sha256" in names)

    def pull_latest_checkpoint(self) -> Path | None:
        """Download the newest remote checkpoint that verifies into the staging directory.

        Only if it is newer.
        """
        local_dir = self.local / "checkpoints"
        # Ranks on one machine share the staging directory.
        with file_lock(self.local / ".pull.lock"):
            for name in reversed(self.checkpoint_names()):
                target = local_dir / name
                if target.is_file():
                    try:
                        verify_checkpoint(target)
                        return target  # the newest remote one is already here
                    except CheckpointError:
                        pass
                with (
                    atomic_path(target.with_name(name + ".sha256")) as tmp_sums,
                    atomic_path(target) as tmp,
                ):
                    self.fs.get_file(self._remote(f"checkpoints/{name}.sha256"), str(tmp_sums))
                    self.fs.get_file(self._remote(f"checkpoints/{name}"), str(tmp))
                try:
                    verify_checkpoint(target)
                except CheckpointError as exc:
                    log.warning(
                        "remote checkpoint %s/checkpoints/%s is corrupt (%s); trying an older one",
                        self.url,
                        name,
                        exc,
                    )
                    target.unlink(missing_ok=True)
                    continue
                log.info("pulled %s/checkpoints/%s", self.url, name)
                return target
        return None


class RunDir:
    """A run's directory as training sees it: always a local path, mirrored to object storage
    when ``train.out_dir`` is an fsspec URL. For a local run every ``publish_*`` does nothing."""

    def __init__(self, out_dir: str):
        self.remote = RemoteRunDir(out_dir) if is_remote(out_dir) else None
        self.path = self.remote.local if self.remote else Path(out_dir)

    @property
    def url(self) -> str | None:
        return self.remote.url if self.remote else None

    @property
    def where(self) -> str:
        """The run directory as the user named it (for messages)."""
        return self.url or str(self.path)

    def pull_for_resume(self) -> None:
        """Every rank: this machine may never have seen the earlier attempt's checkpoints."""
        if self.remote is not None:
            self.remote.pull_latest_checkpoint()

    def existing_checkpoints(self) -> list[str]:
        """Names of the run's step checkpoints, here or (when none are here) in object storage."""
        local = [p.name for p in list_checkpoints(self.path)]
        return local or (self.remote.checkpoint_names() if self.remote else [])

    def publish_checkpoint(self, path: Path, *, is_best: bool) -> None:
        """The checkpoint, then its sidecar; then best.pt; then drop what was pruned here."""
        if self.remote is None:
            return
        self.remote.publish_checkpoint(path)
        if is_best:
            self.remote.publish_checkpoint(self.path / "best.pt")
        self.remote.prune({p.name for p in list_checkpoints(self.path)})
        self.remote.publish_files()

    def publish_files(self) -> None:
        if self.remote is not None:
            self.remote.publish_files()
