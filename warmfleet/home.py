"""The operator's home folder (``$WARMFLEET_HOME``) is the operator's only: it holds the admin token, the
accounts' token hashes, the signing keys, every prediction's input and output and the uploaded files.

``secure_home`` makes it so, for what is there and for what comes: folders 0700, files 0600, and a umask of
0077 for the process (inherited by the processes it starts), so a file made later is never readable by
another user of the machine, whatever its writer does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def secure_home(home: Path) -> None:
    """Make ``home`` (created if missing) and everything in it readable by the operator only."""
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(FOLDER_MODE)
    for root, folders, files in os.walk(home):
        for name in folders:
            _chmod(Path(root, name), FOLDER_MODE)
        for name in files:
            _chmod(Path(root, name), FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            path.chmod(mode)
    except FileNotFoundError:  # gone meanwhile (a sweep, a temporary file)
        pass
