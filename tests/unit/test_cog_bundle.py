"""Bundles of a Cog model directory (``warmfleet.bundle``): the same files give the same bytes and digest,
ignore files are read with gitignore's rules, extraction stays inside its folder, and a bundle streams
through in bounded pieces."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from warmfleet.bundle import (
    CHUNK_BYTES,
    BundleWriter,
    bundle_files,
    bundle_to_tempfile,
    extract_bundle,
    read_chunks,
    write_bundle,
)

FILES = {"cog.yaml": 'predict: "predict.py:Predictor"\n', "predict.py": "class Predictor: ...\n",
         "weights/w.bin": "\x00\x01" * 100}
BIG_BYTES = 20 << 20


def make(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def bundled(root: Path) -> tuple[str, bytes]:
    out = io.BytesIO()
    digest, size = write_bundle(root, out)
    data = out.getvalue()
    assert size == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    return digest, data


def bundle_file(root: Path, tmp_path: Path) -> Path:
    archive = tmp_path / "bundle.tar"
    with archive.open("wb") as out:
        write_bundle(root, out)
    return archive


# Deterministic content addressing


def test_the_same_files_give_the_same_bytes_whatever_their_times_and_creation_order(tmp_path):
    first = make(tmp_path / "a", FILES)
    second = make(tmp_path / "b", dict(reversed(list(FILES.items()))))
    for i, path in enumerate(p for p in second.rglob("*") if p.is_file()):
        os.utime(path, (1_000_000 + i, 2_000_000 + i))
    assert bundled(first) == bundled(second)


def test_a_changed_byte_changes_the_digest(tmp_path):
    before, _ = bundled(make(tmp_path / "a", FILES))
    after, _ = bundled(make(tmp_path / "b", {**FILES, "predict.py": "class Predictor: ...\n\n"}))
    assert after != before


def test_a_renamed_file_changes_the_digest(tmp_path):
    before, _ = bundled(make(tmp_path / "a", FILES))
    renamed = {("main.py" if k == "predict.py" else k): v for k, v in FILES.items()}
    assert bundled(make(tmp_path / "b", renamed))[0] != before


def test_the_archive_holds_sorted_names_and_no_times_or_owners(tmp_path):
    _, data = bundled(make(tmp_path, FILES))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(FILES)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


# What is left out


def test_cogignore_patterns_leave_files_out_with_gitignore_rules(tmp_path):
    root = make(tmp_path, {**FILES, ".cogignore": "*.ckpt\ndata/\n!keep.ckpt\n", "model.ckpt": "x",
                           "sub/deep.ckpt": "x", "keep.ckpt": "k", "data/a.txt": "d", "sub/data/b.txt": "d",
                           "database.txt": "not a folder"})
    assert bundle_files(root) == sorted([*FILES, ".cogignore", "keep.ckpt", "database.txt"])


def test_dockerignore_is_read_when_there_is_no_cogignore(tmp_path):
    root = make(tmp_path, {**FILES, ".dockerignore": "*.tmp\n", "scratch.tmp": "x", "notes.bak": "x"})
    assert "scratch.tmp" not in bundle_files(root)
    assert "notes.bak" in bundle_files(root)


def test_dockerignore_is_not_read_when_there_is_a_cogignore(tmp_path):
    root = make(tmp_path, {**FILES, ".dockerignore": "*.tmp\n", ".cogignore": "*.bak\n",
                           "scratch.tmp": "x", "notes.bak": "x"})
    assert "scratch.tmp" in bundle_files(root)
    assert "notes.bak" not in bundle_files(root)


def test_version_control_caches_and_cog_output_are_always_left_out(tmp_path):
    root = make(tmp_path, {**FILES, ".git/HEAD": "ref", "__pycache__/predict.cpython-311.pyc": "x",
                           "sub/__pycache__/m.pyc": "x", "stray.pyc": "x", ".cog/openapi_schema.json": "{}",
                           ".venv/lib/x.py": "x", "sub/keep.py": "x"})
    assert bundle_files(root) == sorted([*FILES, "sub/keep.py"])


def test_symlinks_leaving_the_directory_are_left_out_and_those_inside_are_followed(tmp_path):
    outside = make(tmp_path / "outside", {"secret.txt": "private", "dir/file.txt": "private"})
    root = make(tmp_path / "model", FILES)
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "alias.py").symlink_to(root / "predict.py")
    assert bundle_files(root) == sorted([*FILES, "alias.py"])
    _, data = bundled(root)
    assert b"private" not in data


# Extraction


def test_extract_round_trips_files_contents_and_the_executable_bit(tmp_path):
    root = make(tmp_path / "model", {**FILES, "run.sh": "#!/bin/sh\n"})
    (root / "run.sh").chmod(0o755)
    archive, digest, _ = bundle_to_tempfile(root)
    try:
        extract_bundle(archive, tmp_path / "out")
    finally:
        archive.unlink()
    out = tmp_path / "out"
    assert bundle_files(out) == bundle_files(root)
    assert all((out / name).read_bytes() == (root / name).read_bytes() for name in bundle_files(root))
    assert os.access(out / "run.sh", os.X_OK)
    assert not os.access(out / "predict.py", os.X_OK)
    assert bundled(out)[0] == digest


def test_extract_replaces_what_was_in_the_destination(tmp_path):
    dest = make(tmp_path / "out", {"stale.txt": "old"})
    extract_bundle(bundle_file(make(tmp_path / "model", FILES), tmp_path), dest)
    assert sorted(bundle_files(dest)) == sorted(FILES)


def test_a_member_escaping_the_destination_is_refused_and_nothing_is_left_behind(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("ok.txt", "../evil"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    area = tmp_path / "area"
    dest = make(area / "dest", {"previous.txt": "kept"})
    with pytest.raises(tarfile.OutsideDestinationError):
        extract_bundle(archive, dest)
    assert sorted(p.name for p in area.iterdir()) == ["dest"]
    assert not (tmp_path / "evil").exists()
    assert bundle_files(dest) == ["previous.txt"]


# Receiving a bundle in chunks


def test_bundle_writer_hashes_to_write_bundles_digest_and_files_it_under_it(tmp_path):
    archive, digest, size = bundle_to_tempfile(make(tmp_path / "model", FILES))
    writer = BundleWriter(tmp_path / "store", max_bytes=size)
    for chunk in read_chunks(archive, chunk_bytes=1000):
        writer.write(chunk)
    got, final = writer.commit()
    assert got == digest
    assert final == tmp_path / "store" / f"{digest}.tar"
    assert final.read_bytes() == archive.read_bytes()
    assert [p.name for p in (tmp_path / "store").iterdir()] == [f"{digest}.tar"]
    archive.unlink()


def test_bundle_writer_refuses_a_chunk_past_max_bytes_and_abort_leaves_nothing(tmp_path):
    store = tmp_path / "store"
    writer = BundleWriter(store, max_bytes=10)
    writer.write(b"x" * 10)
    with pytest.raises(ValueError, match="over the limit of 10 bytes"):
        writer.write(b"x")
    writer.abort()
    assert list(store.iterdir()) == []


def test_bundle_writer_abort_removes_its_temporary_file(tmp_path):
    writer = BundleWriter(tmp_path / "store", max_bytes=100)
    writer.write(b"partial")
    assert len(list((tmp_path / "store").iterdir())) == 1
    writer.abort()
    assert list((tmp_path / "store").iterdir()) == []


# Streaming


class WriteSizes(io.RawIOBase):
    """A sink that keeps only the size of each write."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.sizes.append(len(data))
        return len(data)


def test_a_big_file_streams_through_the_bundle_in_bounded_pieces(tmp_path):
    root = make(tmp_path / "model", FILES)
    with (root / "weights" / "big.bin").open("wb") as f:
        for _ in range(BIG_BYTES // CHUNK_BYTES):
            f.write(os.urandom(CHUNK_BYTES))
    sink = WriteSizes()
    tracemalloc.start()
    try:
        _, size = write_bundle(root, sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > BIG_BYTES
    assert sum(sink.sizes) == size
    assert max(sink.sizes) <= CHUNK_BYTES
    assert peak < 4 * CHUNK_BYTES


def test_read_chunks_yields_pieces_of_at_most_chunk_bytes_that_join_to_the_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(2 * CHUNK_BYTES + 123))
    chunks = list(read_chunks(path))
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 123]
    assert b"".join(chunks) == path.read_bytes()
