"""A small filesystem for the database (a tmpfs the harness mounts) and a filler file that
takes every free byte of it, kept full until it is removed."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

from .rig import log

CHUNKS = (1 << 20, 1 << 16, 1 << 12, 512)   # the filler writes big, then ever smaller
TOP_UP_EVERY = 0.2                           # seconds between two top-ups while full


def mount_tmpfs(folder: Path, size_mib: int) -> str | None:
    """Mount a tmpfs of `size_mib` MiB on `folder`; None, or why it cannot be done."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return f"mounting a tmpfs needs root (this harness runs as uid {os.geteuid()})"
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755",
                               "tmpfs", str(folder)], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"mount failed: {error}"
    if done.returncode:
        return f"mount failed: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def unmount(folder: Path) -> None:
    """Unmount it (lazily if something still holds it open)."""
    for cmd in (["umount", str(folder)], ["umount", "-l", str(folder)]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                return
    log(f"could not unmount {folder}")


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer could still write there."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


class Filler(threading.Thread):
    """Fills the filesystem of `folder` with one file and keeps it full until `halt`."""

    def __init__(self, folder: Path, limit: float) -> None:
        super().__init__(daemon=True, name="filler")
        self.path = folder / "filler"
        self.limit = limit
        self.full = threading.Event()
        self.halt = threading.Event()
        self.written = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with open(self.path, "ab", buffering=0) as handle:
            while not self.halt.is_set() and time.monotonic() < deadline:
                self.top_up(handle.fileno())
                self.full.set()
                self.halt.wait(TOP_UP_EVERY)
        self.path.unlink(missing_ok=True)

    def top_up(self, fd: int) -> None:
        """Write until ENOSPC with chunks ever smaller (a bounded number of writes)."""
        for chunk in CHUNKS:
            block = b"\0" * chunk
            for _ in range(1 << 16):
                try:
                    self.written += os.write(fd, block)
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
