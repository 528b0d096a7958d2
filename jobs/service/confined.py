"""Local files for service jobs, confined to the configured roots and never through a symlink.

The URI check at submission resolves paths once, but a job may wait in the queue and the tree may change
under it (a folder swapped for a symlink). So every listing and every open walks the path again from the
root, one component at a time with O_NOFOLLOW relative to the parent's descriptor: a symlink anywhere below
the root is refused at the moment of use, with no window between a check and the open. The roots themselves
are the operator's (resolved once at start-up) and may be symlinks.

It is an fsspec filesystem with a protocol of its own (not "file"), so the runner and the pipeline take the
non-local code paths: inputs are opened through `open()` (never handed to a decoder by path) and outputs are
published through `pipe_file`/`put_file`, which write a temp file beside the target and rename it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterable

from fsspec.spec import AbstractFileSystem

log = logging.getLogger("anon.service.confined")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ConfinedFileSystem(AbstractFileSystem):
    protocol = ("confined",)
    cachable = False  # one instance per job and root set; fsspec must not hand it to anyone else
    root_marker = "/"

    def __init__(self, roots: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        # As configured and as resolved: a root that is itself a symlink is the operator's choice.
        self.roots = sorted({os.path.normpath(x) for r in roots for x in (r, os.path.realpath(r))},
                            key=len, reverse=True)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("confined://", "file://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path.rstrip("/") or "/"

    # -- the walk ------------------------------------------------------------------------------------------------
    def _split(self, path: str) -> tuple[str, list[str]]:
        path = os.path.normpath(self._strip_protocol(path))
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                rel = path[len(root):].strip("/")
                parts = [p for p in rel.split("/") if p]
                if any(p in ("..", ".") for p in parts):
                    break
                return root, parts
        raise PermissionError(errno.EACCES, "path is outside the allowed prefixes")

    def _open_dir(self, root: str, parts: list[str], create: bool = False) -> int:
        """A descriptor of root/parts..., every component opened without following symlinks."""
        if create:
            os.makedirs(root, exist_ok=True)  # the root is the operator's (a write prefix not created yet)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refused(part) from exc
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_file(self, path: str, flags: int = os.O_RDONLY) -> int:
        root, parts = self._split(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        dfd = self._open_dir(root, parts[:-1])
        try:
            # O_NONBLOCK: opening a FIFO planted in the tree must not hang the job; cleared below for files.
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(parts[-1]) from exc
            raise
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise PermissionError(errno.EACCES, "not a regular file")
        os.set_blocking(fd, True)
        return fd

    # -- what the runner and the pipeline use -----------------------------------------------------------------------
    def _lstat(self, path: str) -> os.stat_result | None:
        root, parts = self._split(path)
        if not parts:
            return os.stat(root)
        try:
            dfd = self._open_dir(root, parts[:-1])
        except (FileNotFoundError, PermissionError):
            return None
        try:
            return os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)

    def isfile(self, path) -> bool:
        st = self._lstat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def isdir(self, path) -> bool:
        st = self._lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def exists(self, path, **kwargs) -> bool:
        return self._lstat(path) is not None

    def info(self, path, **kwargs) -> dict:
        st = self._lstat(path)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        return {"name": self._strip_protocol(path), "size": st.st_size, "type": kind}

    def size(self, path) -> int:
        fd = self._open_file(path)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Regular files under `path`; symlinked files and directories are skipped (and logged), never followed."""
        root, parts = self._split(path)
        top = os.path.join(root, *parts)
        if self.isfile(top):
            return {top: self.info(top)} if detail else [top]
        fd = self._open_dir(root, parts)
        found: list[str] = []
        skipped = 0
        try:
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                for name in list(dirnames):
                    if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                        dirnames.remove(name)  # fwalk would not follow it either; counted for the log
                        skipped += 1
                for name in filenames:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found.append(os.path.normpath(os.path.join(top, dirpath, name)))
                    else:
                        skipped += 1
        finally:
            os.close(fd)
        if skipped:
            log.warning("%d symlinks or special files under a job input were skipped", skipped)
        found.sort()
        return {p: self.info(p) for p in found} if detail else found

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode not in ("rb", "r"):
            raise PermissionError(errno.EACCES, "confined files are opened for reading only; use pipe_file/put_file")
        return os.fdopen(self._open_file(path), "rb")

    def cat_file(self, path, start=None, end=None, **kwargs) -> bytes:
        with self._open(path) as fh:
            if start:
                fh.seek(start)
            return fh.read() if end is None else fh.read(end - (start or 0))

    def makedirs(self, path, exist_ok=False) -> None:
        root, parts = self._split(path)
        os.close(self._open_dir(root, parts, create=True))

    def mkdir(self, path, create_parents=True, **kwargs) -> None:
        self.makedirs(path, exist_ok=True)

    def _publish(self, path: str, fill) -> None:
        """Temp file beside the target (short name, O_EXCL), fsync, rename: all relative to one directory fd."""
        root, parts = self._split(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        dfd = self._open_dir(root, parts[:-1], create=True)
        tmp = f".anon-{uuid.uuid4().hex[:16]}.partial"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fill(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                # os.replace onto a symlink replaces the link itself, never the file it points to
                os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(dfd)

    def pipe_file(self, path, value, **kwargs) -> None:
        self._publish(path, lambda fh: fh.write(value))

    def put_file(self, lpath, rpath, **kwargs) -> None:
        def fill(fh) -> None:
            with open(lpath, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        self._publish(rpath, fill)


def _refused(part: str) -> PermissionError:
    return PermissionError(errno.EACCES, f"symlink refused: {part[:80]!r} is a symbolic link")
