"""Writing files safely: whole or not at all, by one writer at a time, and what a crash leaves behind cleared.

A directory is written as .NAME.tmp-PID beside it, then renamed into place (atomic_dir, replace_dir); a file
likewise (atomic_write). A lock beside an output makes its writer the only one (sole_writer).
"""

import errno
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from support.cli import UserError


@contextmanager
def atomic_dir(path, overwrite=False, last_file=None):
    """Yield a temporary directory that becomes `path` only once the block succeeds.

    Beside `path` live, for a moment, .NAME.tmp-PID (being written), .NAME.old-PID (the previous
    version, between the two renames of replace_dir) and .NAME.trash-PID (being deleted). A crash can
    leave any of them: clear_leftovers clears those of dead processes, restore_previous puts back an
    .old-* that holds last_file (the file the block writes last).
    """
    path = Path(path).resolve() if Path(path).is_symlink() else Path(path)  # a link: write where it points
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --force to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path, last_file)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # the data must be on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o666 & ~umask)  # safetensors writes owner-only files
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}; nothing was changed") from None
        raise
    replace_dir(tmp, path)


@contextmanager
def sole_writer(path, holder=True):
    """This process is the one writer of output `path` while the block runs: a lock (.NAME.lock beside it) that
    a second writer finds taken at once, naming the holder's PID. The OS releases it when the process dies,
    so a lock left by a killed run never blocks the next. holder=False: take none (torchrun's other ranks).
    Yields the lock file (None without one)."""
    import fcntl

    if not holder:
        yield
        return
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+")
    except OSError as e:  # a read-only or special folder (/proc): refused before any work
        raise UserError(f"cannot write {path}: {e.strerror} ({lock})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{path} is being written by another process (PID {f.read().strip() or '?'})") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield f  # forked workers must close it (data/prepare.py): the lock lives as long as any copy
        finally:
            lock.unlink(missing_ok=True)  # before the lock is released: a newcomer makes a file of its own


def nested(a, b):
    """Whether paths a and b are one path, or one lies inside the other, however they are spelled (links, "..")."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def not_an_input(output, *inputs):
    """Refuse an output that is an input of the same command, or lies in an input folder: a checkpoint directory
    is replaced whole by its next save, and a file added to it would go with it."""
    for source in filter(None, inputs):
        if output and nested(output, source):
            raise UserError(f"{output} is, or lies in, {source}, an input of this command: write it elsewhere")


def replace_dir(new, path):
    """Rename directory `new` to `path`. A previous `path` is renamed aside first and deleted last: it is
    never deleted in place, so a crash leaves it whole (as .NAME.old-PID, which restore_previous puts back)."""
    if not path.exists():
        new.rename(path)
        return
    old, trash = (path.parent / f".{path.name}.{kind}-{os.getpid()}" for kind in ("old", "trash"))
    path.rename(old)
    new.rename(path)
    old.rename(trash)
    trash.unlink() if trash.is_symlink() else shutil.rmtree(trash)  # a link: its target is not ours to delete


def atomic_write(path, data):
    """Write a file whole or not at all: a temporary beside it, synced to disk, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def growing_file(path):
    """A file written as work finishes: appended to PATH.partial, renamed to PATH once whole. An interrupted run
    leaves what it finished in PATH.partial, and never a PATH that looks complete."""
    partial = Path(path).with_name(Path(path).name + ".partial")
    with open(partial, "w") as f:
        yield f
        os.fsync(f.fileno())
    os.replace(partial, path)


def is_disk_full(e):
    """A full disk or quota, or a file-size limit: as an OSError, or inside safetensors' / torch's own errors."""
    codes = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    if isinstance(e, OSError):
        return e.errno in codes
    return any(f"(os error {code})" in str(e) for code in codes) or "file write failed" in str(e)


def leftovers(path, *kinds):
    """The .NAME.KIND-PID directories beside path whose process is gone."""
    found = []
    for kind in kinds:
        for d in path.parent.glob(f".{path.name}.{kind}-*"):
            pid = d.name.rsplit("-", 1)[1]
            if pid.isdigit() and not is_alive(int(pid)):
                found.append(d)
    return found


def is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        pass
    return True


def die_with_parent(parent):
    """Have Linux send this process SIGTERM when `parent` dies (elsewhere: nothing): a child of a killed
    lab/miniature.py, or a worker of a killed data/prepare.py, stops instead of running on unowned."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)


def restore_previous(path, last_file):
    """After a crash between replace_dir's two renames, path is gone and its previous version is an .old-*:
    whole if it holds last_file, the file its writer wrote last."""
    if path.exists():
        return
    whole = [d for d in leftovers(path, "old") if (d / last_file).is_file()]
    if whole:  # the newest, if crashes left several
        max(whole, key=lambda d: (d / last_file).stat().st_mtime_ns).rename(path)


def clear_leftovers(path, last_file=None):
    """Put back a previous version of path that a crash left aside (one that holds last_file; without it, none),
    then delete what dead processes left beside it."""
    if last_file:
        restore_previous(path, last_file)
    for leftover in leftovers(path, "tmp", "old", "trash"):
        shutil.rmtree(leftover, ignore_errors=True)
