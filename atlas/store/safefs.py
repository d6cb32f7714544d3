"""Low-level file operations every writer of the atlas goes through: modes, swaps, deletion.

Three promises live here so no caller has to remember them: files and folders the atlas creates
get the modes the process umask gives any normal file (temporary files from `mkstemp` and
folders from `mkdtemp` would otherwise stay owner-only after the rename); a folder is replaced
by an atomic exchange where the system has one; and deletion stays below a root the caller
names and never follows a symbolic link.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import time
from pathlib import Path

from atlas.core.errors import AtlasError

_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


class UnsafeDeletionError(AtlasError):
    """A deletion that would leave the folder the atlas owns or follow a symbolic link."""


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file: 0644 under umask 0022."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode `mkdir` would give a new folder: 0755 under umask 0022."""
    return 0o777 & ~current_umask()


def remove(path: Path | str, within: Path | str) -> None:
    """Delete a file, link or folder strictly below `within`, never following a symbolic link.

    A link is removed itself, not what it points to; a folder is removed with its contents, and
    the links inside it are unlinked, not followed. Nothing happens when `path` is already gone.
    """
    root = Path(os.path.abspath(within))
    target = Path(os.path.abspath(path))  # normalizes `..`, so a path cannot climb out of `root`
    if root not in target.parents:
        raise UnsafeDeletionError(
            f"refusing to delete {path}: it is not inside {root}, and the atlas only deletes what "
            "it wrote inside its own output folder"
        )
    folder = root
    for part in target.relative_to(root).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise UnsafeDeletionError(
                f"refusing to delete {path}: {folder} is a symbolic link, and deletion never follows "
                "links; replace the link with a real folder"
            )
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(target)
    else:
        os.unlink(target)


def remove_empty_folders(folder: Path | str, within: Path | str) -> None:
    """Remove `folder` and the folders below it that hold nothing, deepest first; a folder that
    still holds anything (a file, a link) stays, and no link is followed."""
    root, top = Path(os.path.abspath(within)), Path(os.path.abspath(folder))
    if root not in top.parents:
        raise UnsafeDeletionError(f"refusing to remove folders at {folder}: it is not inside {root}")
    if top.is_symlink() or not top.is_dir():
        return
    for current, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):  # not empty: kept
            os.rmdir(current)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    return done == 0


def swap_folder(new: Path, current: Path) -> Path | None:
    """Put the folder `new` at `current`; returns where the replaced folder now is (None: none).

    Where the system swaps atomically, `current` always names a complete folder, even if the
    process is killed midway; elsewhere two renames leave a moment where it names nothing, and
    the replaced folder waits under a dot name next to it.
    """
    if not current.exists():
        os.replace(new, current)
        return None
    if _exchange(new, current):
        return new
    retired = current.with_name(f".{current.name}.old-{os.getpid()}-{time.time_ns()}")
    os.replace(current, retired)
    try:
        os.replace(new, current)
    except BaseException:
        os.replace(retired, current)
        raise
    return retired
