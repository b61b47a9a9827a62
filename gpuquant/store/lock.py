"""The store's lock: one run at a time writes an output (see :mod:`gpuquant.store.layout`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from gpuquant.errors import StoreBusyError


class StoreLock:
    """An exclusive ``flock`` on ``.NAME.lock`` next to the output directory ``NAME``, with symbolic
    links resolved (two paths to one directory share its lock).

    The file is unlinked on release; acquiring re-checks that the locked file is still the one at
    the path (another run may have unlinked it meanwhile), so two runs never both hold it. The file
    names its holder (``PID@HOST``, for the message a second run gets); that note is best effort: on
    a full disk it stays empty and the lock holds regardless. A file left by a killed run is no lock
    (the kernel drops ``flock`` locks with their process): the next run takes it and removes it.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        real = Path(os.path.realpath(output))  # one lock per directory, whatever the path that names it
        self.path = real.parent / f".{real.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> StoreLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise StoreBusyError(
                    f"{self.output} is being written by another gpuquant run{holder} (lock {self.path}); "
                    "wait for it to finish, or stop it and continue with --resume") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                with contextlib.suppress(OSError):  # a full disk: the note is lost, the lock holds
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
                return self
            os.close(fd)  # the file we locked was unlinked by a run that just finished: retry

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            note = os.pread(fd, 300, 0).decode(errors="replace").strip()
        except OSError:
            return ""
        pid, _, host = note.partition("@")
        return f" (process {pid}{f' on {host}' if host else ''})" if pid.isdigit() else ""

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
