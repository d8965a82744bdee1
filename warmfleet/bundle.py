"""A Cog model directory as one content-addressed bundle: a deterministic tar of its files.

The same files give the same bytes (sorted names, no times, owners or umask in the archive), so the
bundle's SHA-256 is the version id: a push of identical content is the same version. Files are streamed
through the archive and the digest, never held in memory whole (weights may be gigabytes).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

import pathspec

CHUNK_BYTES = 1 << 20
# Never part of a bundle: version control, Cog's own build output (the schema is derived at push), caches.
ALWAYS_IGNORED = (".git/", ".hg/", ".cog/", "__pycache__/", "*.pyc", ".venv/", ".DS_Store")
IGNORE_FILES = (".cogignore", ".dockerignore")  # the first one present is read, as Cog does


def ignore_spec(root: Path) -> pathspec.PathSpec:
    """The patterns that leave files out: ``ALWAYS_IGNORED`` and ``.cogignore`` (else ``.dockerignore``),
    read with gitignore's rules (``*``, ``**``, a trailing ``/`` for folders, ``!`` to keep)."""
    lines = list(ALWAYS_IGNORED)
    for name in IGNORE_FILES:
        if (root / name).is_file():
            lines += (root / name).read_text().splitlines()
            break
    return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def bundle_files(root: Path) -> list[str]:
    """The files a bundle of ``root`` holds, as sorted POSIX paths relative to it. Symbolic links are
    followed only when they stay inside ``root``."""
    spec = ignore_spec(root)
    top = root.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not spec.match_file(f"{(rel_dir / d).as_posix()}/"))
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            path = Path(dirpath) / name
            if spec.match_file(rel) or not path.resolve().is_relative_to(top) or not path.resolve().is_file():
                continue
            found.append(rel)
    return sorted(found)


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it on its way to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)


def write_bundle(root: Path, out: BinaryIO) -> tuple[str, int]:
    """Write the bundle of ``root`` to ``out``; returns its SHA-256 (hex) and size in bytes."""
    sink = _HashingWriter(out)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in bundle_files(root):
            path = root / rel
            info = tarfile.TarInfo(rel)
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    return sink.digest.hexdigest(), sink.size


def bundle_to_tempfile(root: Path) -> tuple[Path, str, int]:
    """The bundle of ``root`` in a temporary file (the caller removes it), with its digest and size."""
    fd, name = tempfile.mkstemp(prefix="warmfleet-bundle-", suffix=".tar")
    with os.fdopen(fd, "wb") as out:
        digest, size = write_bundle(root, out)
    return Path(name), digest, size


def read_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            yield chunk


def extract_bundle(archive: Path, dest: Path) -> None:
    """Unpack a bundle into ``dest`` (made anew), refusing any member that would land outside it."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(staging, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class BundleWriter:
    """Receives a bundle in chunks (a push), hashing as it writes; ``commit`` files it under its digest."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._max = max_bytes
        fd, name = tempfile.mkstemp(prefix=".incoming-", dir=directory)
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.existed = False  # after commit: the store held these bytes already (an identical push)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max:
            raise ValueError(f"the bundle is over the limit of {self._max} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> tuple[str, Path]:
        """Close; the bundle moves to ``DIGEST.tar`` (one already there is the same bytes)."""
        self._file.close()
        digest = self._hash.hexdigest()
        final = self._dir / f"{digest}.tar"
        self.existed = final.exists()
        os.replace(self._path, final)
        return digest, final

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)
