"""Files that a later step reads, written so that a crash never leaves half of one behind.

Every file a run writes and a later step reads (``config.json``, ``metrics.json``, the
checkpoints, an ensemble's ``members.json``) is written to a temporary file beside it, flushed
to disk and renamed over the old one: ``os.replace`` is atomic on POSIX file systems, so a
reader sees the old file or the new one, never a truncated one, whether the writer is killed,
the disk fills up or the machine loses power. Temporary files are named ``.<name>.partial-<pid>``
(and keep the name's suffix, which Keras's savers require); those of a writer that died are
removed by the next write of the same file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import keras


class UnreadableFileError(ValueError):
    """A file that a run needs exists but cannot be read (truncated, corrupt, not the right kind)."""


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name this process writes ``path`` under before publishing it.

    The suffixes stay last: Keras saves only to names ending in ".keras" or ".weights.h5".
    """
    path = Path(path)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}.partial-{os.getpid()}{suffixes}")


def remove_stale_partials(path: Path) -> None:
    """Removes the temporary files of writers of ``path`` that are no longer running."""
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    for partial in path.parent.glob(f".{stem}.partial-*{suffixes}"):
        pid = partial.name[len(f".{stem}.partial-") : len(partial.name) - len(suffixes)]
        if pid.isdecimal() and int(pid) != os.getpid() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(partial: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Flushes the finished file ``partial`` to disk and renames it over ``path``."""
    partial, path = Path(partial), Path(path)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    _fsync_dir(path.parent)
    return path


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Calls ``write(temporary_path)``, then renames the temporary file over ``path``.

    If ``write`` raises, ``path`` is left as it was and the temporary file is removed.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    partial = partial_path(path)
    try:
        write(partial)
        return publish(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def sync_tree(folder: str | os.PathLike) -> None:
    """Flushes every file under ``folder``, and the folder itself, to disk."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(Path(folder))


def point_symlink(link: str | os.PathLike, target: str) -> None:
    """Makes ``link`` a symlink to ``target`` in one atomic step (a new link renamed over it)."""
    link = Path(link)
    partial = link.with_name(f".{link.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    os.symlink(target, partial)
    os.replace(partial, link)
    _fsync_dir(link.parent)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return replace_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def save_model_atomically(model: keras.Model, path: str | os.PathLike) -> Path:
    """``model.save(path)`` through a temporary ``.keras`` file and a rename."""
    return replace_atomically(path, lambda partial: model.save(partial))


def load_keras_model(path: str | os.PathLike) -> keras.Model:
    """``keras.models.load_model``, with a clear error for a file that cannot be a model.

    Raises:
        FileNotFoundError: there is no such file.
        UnreadableFileError: the file is truncated or corrupt; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    if not zipfile.is_zipfile(path):
        raise UnreadableFileError(
            f"{path} is not a readable .keras file (truncated or corrupt, {path.stat().st_size} "
            "bytes); delete it and train again, or resume the run (--resume) to rebuild it "
            "from its last backup."
        )
    try:
        return keras.models.load_model(path)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise UnreadableFileError(
            f"{path} is not a readable .keras file ({type(error).__name__}: {error}); delete it "
            "and train again, or resume the run (--resume) to rebuild it from its last backup."
        ) from error
