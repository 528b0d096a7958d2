"""`flaky://` — a local-disk fsspec filesystem that behaves like an object store whose writes sometimes fail.

Used by tests/test_fault_injection.py to make the archive job's writes fail deterministically:

- it is *not* a local filesystem to `anon_core.storage.is_local` (its protocol is only "flaky"), so the job
  publishes through `pipe_file` / `put_file`, as it does on S3;
- a completed write is atomic (same-directory hidden temp + rename), like a PUT: a reader sees the whole object
  or none;
- the FIRST write of every `every`-th object path (chosen by a hash of the path relative to `plan.root`, so the
  same objects in every process and every run) fails with OSError. About half of those fail before anything
  is stored ("before": a refused PUT), the others after the object is stored ("after": the PUT landed but its
  response was lost), so a retry must be idempotent. Which paths already failed once is remembered as files
  in `plan.state_dir` (shared by the driver and every Ray worker), so a retry in another process succeeds too,
  and the test can count them.

Ray workers need the protocol registered. It is registered when this module is imported, and the job's
storage options carry a `FlakyPlan` instance: unpickling the actor's settings in a worker imports
`tests.flakyfs` (the repo root is on the workers' path: the test sets PYTHONPATH), which registers it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "flaky"


@dataclass(frozen=True)
class FlakyPlan:
    every: int
    state_dir: str
    root: str = ""  # paths are hashed relative to this, so the same objects fail in every test run


class FlakyFileSystem(LocalFileSystem):
    protocol = (PROTOCOL,)
    root_marker = "/"

    def __init__(self, plan: FlakyPlan | None = None, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        if path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    # -- fault injection

    def _injected(self, path: str) -> str | None:
        """'before' / 'after' on the first write of a selected path, else None."""
        if self.plan is None or self.plan.every <= 0:
            return None
        path = self._strip_protocol(path)
        root = self.plan.root.rstrip("/") + "/" if self.plan.root else ""
        digest = hashlib.sha256(path[len(root):].encode() if root and path.startswith(root) else path.encode())
        digest = digest.hexdigest()
        if int(digest, 16) % self.plan.every:
            return None
        mode = "after" if int(digest[:8], 16) % 2 else "before"
        os.makedirs(self.plan.state_dir, exist_ok=True)
        try:  # O_EXCL: exactly one writer, in any process, gets the failure
            fd = os.open(os.path.join(self.plan.state_dir, digest), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{mode} {path}\n")
        return mode

    def _publish(self, path: str, write) -> None:
        path = self._strip_protocol(path)
        mode = self._injected(path)
        if mode == "before":
            raise OSError(f"injected write failure (nothing stored): {path}")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.upload")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if mode == "after":
            raise OSError(f"injected write failure (object stored, response lost): {path}")

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(value)

        self._publish(path, write)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        import shutil

        self._publish(rpath, lambda tmp: shutil.copyfile(self._strip_protocol(lpath), tmp))

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:  # the job must publish whole objects, never stream into the final key
            raise NotImplementedError("flaky:// only supports whole-object writes (pipe_file / put_file)")
        return super()._open(path, mode=mode, **kwargs)


def injected(state_dir: str) -> list[tuple[str, str]]:
    """(mode, path) of every failure injected so far."""
    if not os.path.isdir(state_dir):
        return []
    out = []
    for name in sorted(os.listdir(state_dir)):
        with open(os.path.join(state_dir, name)) as fh:
            mode, _, path = fh.read().strip().partition(" ")
        out.append((mode, path))
    return out


fsspec.register_implementation(PROTOCOL, FlakyFileSystem, clobber=True)
