"""Output folders given on the command line, checked before anything is written.

A file where a folder should be (``--out report.pdf``, or ``--out notes.txt/run``) would otherwise
surface as ``NotADirectoryError`` or ``FileExistsError`` half-way through a command, after some
files were written. The check walks up to the first part of the path that exists: it must be a
folder this process may write into.
"""

from __future__ import annotations

import os
from pathlib import Path

from hospitalnet.errors import ConfigError


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Return ``path`` if it is, or can become, a writable folder; else one ConfigError line."""
    path = Path(path)
    for folder in (path, *path.parents):
        if not os.path.lexists(folder):
            continue
        if not folder.is_dir():
            where = "exists and is not a folder" if folder == path else f"{folder} is not a folder"
            raise ConfigError(f"{option} {path}: {where}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: {folder} is not writable")
        break
    return path
