"""The home is the operator's only (warmfleet/home.py): what is there is made 0700/0600, and what comes
after is made so by the umask."""

from __future__ import annotations

import os

import pytest

from warmfleet.home import secure_home


@pytest.fixture
def umask_restored():
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def test_what_is_there_is_closed_and_what_comes_is_born_closed(tmp_path, umask_restored):
    home = tmp_path / "home"
    (home / "files" / "blobs").mkdir(parents=True, mode=0o755)
    (home / "files" / "blobs" / "abc").write_bytes(b"x")
    (home / "admin_token").write_text("wf_x")
    os.chmod(home / "admin_token", 0o644)
    (home / "link").symlink_to(tmp_path / "elsewhere")  # not followed, not changed

    secure_home(home)

    modes = {p.relative_to(home).as_posix(): oct(p.lstat().st_mode & 0o777) for p in home.rglob("*")
             if not p.is_symlink()}
    assert modes == {"files": "0o700", "files/blobs": "0o700", "files/blobs/abc": "0o600",
                     "admin_token": "0o600"}
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    (home / "later.json").write_text("{}")
    (home / "later").mkdir()
    assert oct((home / "later.json").stat().st_mode & 0o777) == "0o600"
    assert oct((home / "later").stat().st_mode & 0o777) == "0o700"


def test_a_missing_home_is_made_closed(tmp_path, umask_restored):
    secure_home(tmp_path / "new" / "home")
    assert oct((tmp_path / "new" / "home").stat().st_mode & 0o777) == "0o700"
