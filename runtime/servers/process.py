"""Plumbing both servers share: child processes, pid checks, ports, locks, logs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

LOOPBACK: Final = "127.0.0.1"
POLL_S: Final = 0.01
_LOG_ROTATE_BYTES: Final = 10 * 1024 * 1024


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a live pid from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True for a running process; zombies (nobody reaped them yet) count as dead."""
    state = proc_state(pid)
    if state is not None:
        return state[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def group_alive(pgid: int) -> bool:
    """Is any non-zombie process left in process group ``pgid``?"""
    proc = Path("/proc")
    if not proc.is_dir():
        return pid_alive(pgid)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        state = proc_state(int(entry.name))
        if state is not None and state[1] == pgid and state[0] != "Z":
            return True
    return False


class ServerProcess:
    """A server process we started (a Popen) or adopted from an earlier run (a bare pid).

    Started servers lead their own process group, so the group id is the pid.
    """

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self._popen = popen

    @property
    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait for the process to exit (reaping it if it is our child)."""
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def kill_group(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole group and wait until none of it is left."""
        try:
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(timeout)
        deadline = time.monotonic() + timeout
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)


def open_log(path: Path) -> int:
    """An append-mode fd for a server's stdout/stderr; rotated once it grows past 10 MB."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_thread_lock = threading.RLock()
_held_locks: dict[Path, int] = {}


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialize start/stop on one data folder across processes and threads.

    Re-entrant within a thread, so a SIGTERM handler that stops the servers while the main
    thread is inside ``start`` does not deadlock on its own lock.
    """
    with _thread_lock:
        if _held_locks.get(path, 0) > 0:
            _held_locks[path] += 1
            try:
                yield
            finally:
                _held_locks[path] -= 1
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held_locks[path] = 1
            try:
                yield
            finally:
                del _held_locks[path]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def read_int(path: Path) -> int | None:
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 0 < value < 65536 else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def choose_port(port_file: Path, explicit: int | None, name: str) -> int:
    """The explicit port, else the remembered one, else a fresh free port (then remembered).

    A remembered port that another program took meanwhile is replaced (and logged), so a
    stray listener never keeps callwatch from starting; an explicit port is used as given.
    """
    if explicit is not None:
        port = explicit
    else:
        remembered = read_int(port_file)
        if remembered is not None and port_free(remembered):
            port = remembered
        else:
            if remembered is not None:
                log.warning("embedded_port_taken", server=name, port=remembered)
            port = free_port()
    if read_int(port_file) != port:
        write_atomic(port_file, f"{port}\n")
    return port


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False
