"""The embedded Redis: redis-server on loopback, append-only file fsynced before each reply."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import structlog

from runtime.servers.binaries import find_redis_server
from runtime.servers.errors import ServerStartError, ServerUnavailable
from runtime.servers.process import (
    LOOPBACK,
    POLL_S,
    ServerProcess,
    choose_port,
    cmdline,
    file_lock,
    log_tail,
    pid_alive,
    read_int,
    write_atomic,
)

__all__ = ["EmbeddedRedis"]

log = structlog.get_logger(__name__)


def _redis_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command and return the first reply line (b"" if the server hung up)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """A redis-server on loopback with its data in ``<data_dir>/redis``.

    Persistence is the append-only file with ``appendfsync always``: Redis then fsyncs the AOF
    before it answers, so every acknowledged write survives a kill of the server (and even a
    power loss). ``everysec`` is not enough: it may lose up to a second or two of acknowledged
    writes, and while an fsync is slow Redis postpones writing the AOF yet keeps replying.
    RDB snapshots are off (the AOF is the data); ``stop`` still saves one on the way out.
    Only configuration that Redis 6.2 and 7 both understand is used.

    ``durable=False`` (tests) uses ``appendfsync no``: Redis still writes the AOF before it
    replies, so killing the server loses nothing, but the kernel decides when it reaches the
    disk, and a command costs no fsync.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        executable: Path | None = None,
        durable: bool = True,
    ) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self._durable = durable
        self._explicit_port = port
        self._executable = executable
        self._port: int | None = port
        self._proc: ServerProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = read_int(self.dir / "port")
        if self._port is None:
            raise ServerUnavailable("embedded Redis has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or adopt) the server and return once it answers PING. Idempotent."""
        if self.running:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with file_lock(self.dir / ".lock"):
            if self._adopt():
                return
            executable = self._executable or find_redis_server()
            port = self._port = choose_port(self.dir / "port", self._explicit_port, "redis")
            config = self.dir / "redis.conf"
            write_atomic(config, self._config(port))
            popen = subprocess.Popen(  # noqa: S603 - our own binary, arguments we built
                [str(executable), str(config)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._proc = ServerProcess(popen.pid, popen)
            self._wait_ready(self._proc, port, began + timeout)
        log.info(
            "embedded_redis_started",
            port=self._port,
            pid=popen.pid,
            seconds=round(time.monotonic() - began, 3),
        )

    def _config(self, port: int) -> str:
        lines = [
            f"bind {LOOPBACK}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_redis_quote(str(self.dir))}",
            f"pidfile {_redis_quote(str(self.dir / 'redis.pid'))}",
            f"logfile {_redis_quote(str(self.log_path))}",
            "loglevel notice",
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            f"appendfsync {'always' if self._durable else 'no'}",
            'save ""',
            'dbfilename "dump.rdb"',
        ]
        return "\n".join(lines) + "\n"

    def _adopt(self) -> bool:
        """Take over a server from an earlier run that still serves this folder."""
        pid = read_int(self.dir / "redis.pid")
        port = read_int(self.dir / "port")
        if pid is None or port is None or not pid_alive(pid):
            return False
        if "redis-server" not in cmdline(pid):
            return False
        if self._explicit_port is not None and self._explicit_port != port:
            return False
        try:
            pong = _redis_command(port, "PING")
        except OSError:
            return False
        if pong != b"+PONG":
            return False
        self._port, self._proc = port, ServerProcess(pid)
        log.info("embedded_redis_adopted", port=port, pid=pid)
        return True

    def _wait_ready(self, proc: ServerProcess, port: int, deadline: float) -> None:
        last = b""
        while True:
            if not proc.alive:
                self._proc = None
                raise ServerStartError(
                    f"redis-server exited during start-up; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            with contextlib.suppress(OSError):
                last = _redis_command(port, "PING", timeout=0.5)
                if last == b"+PONG":
                    return
            if time.monotonic() >= deadline:
                proc.kill_group()
                self._proc = None
                raise ServerStartError(
                    f"redis-server did not answer PING in time (last reply {last!r}); "
                    f"log {self.log_path}:\n" + log_tail(self.log_path)
                )
            time.sleep(POLL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown: ``SHUTDOWN SAVE``, then SIGTERM, then SIGKILL if it hangs."""
        proc = self._proc
        if proc is None:
            return
        with file_lock(self.dir / ".lock"):
            if proc.alive:
                reply = b""
                with contextlib.suppress(OSError):
                    reply = _redis_command(self.port, "SHUTDOWN", "SAVE", timeout=timeout)
                if reply.startswith(b"-") or not proc.wait(timeout):
                    log.warning(
                        "embedded_redis_shutdown_refused", reply=reply.decode(errors="replace")
                    )
                    proc.signal(signal.SIGTERM)
                    if not proc.wait(timeout):
                        proc.kill_group()
            proc.wait(timeout)
            self._proc = None
        log.info("embedded_redis_stopped", port=self._port)

    def kill(self) -> None:
        """SIGKILL the server (fault tests): no save, no goodbye."""
        proc = self._proc
        if proc is None:
            return
        proc.kill_group()
        self._proc = None
        log.info("embedded_redis_killed", port=self._port)
