"""The embedded PostgreSQL: initdb on first use, postgres on loopback, never as root.

PostgreSQL refuses to run as root. When we are root (containers, CI), the cluster is owned and
run by an unprivileged OS user: ``CALLWATCH_POSTGRES_OS_USER`` if set, else ``callwatch``
(created with ``useradd --system`` / busybox ``adduser -S`` when missing), else ``nobody``.
The server folder is chown'ed to that user, and every ancestor directory the user cannot
traverse gets the ``o+x`` bit (search, not listing); each such change is logged. Children are
started with ``subprocess``'s ``user=``/``group=``/``extra_groups=[]``. pgserver's own wrapper
does much the same with a ``pgserver`` user and ``o+rx``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from runtime.servers.binaries import PostgresBinaries, find_postgres
from runtime.servers.errors import DATABASE_URL_ENV, ServerStartError, ServerUnavailable
from runtime.servers.process import (
    LOOPBACK,
    POLL_S,
    ServerProcess,
    choose_port,
    cmdline,
    file_lock,
    group_alive,
    log_tail,
    open_log,
    pid_alive,
    read_int,
    tcp_accepts,
    write_atomic,
)

__all__ = ["POSTGRES_DB", "POSTGRES_OS_USER_ENV", "POSTGRES_USER", "EmbeddedPostgres"]

log = structlog.get_logger(__name__)

POSTGRES_OS_USER_ENV: Final = "CALLWATCH_POSTGRES_OS_USER"
POSTGRES_USER: Final = "callwatch"
POSTGRES_DB: Final = "callwatch"
_DEFAULT_OS_USER: Final = "callwatch"


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged OS user that owns and runs the cluster when we are root."""

    name: str
    uid: int
    gid: int


def _create_system_user(name: str) -> None:
    """Best effort: ``useradd`` (glibc distributions) or ``adduser`` (busybox)."""
    nologin = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if Path(s).exists()),
        "/bin/false",
    )
    attempts: list[list[str]] = []
    if useradd := shutil.which("useradd"):
        attempts.append(
            [useradd, "--system", "--no-create-home", "--user-group", "--shell", nologin, name]
        )
    if adduser := shutil.which("adduser"):
        attempts.append([adduser, "-S", "-D", "-H", "-s", nologin, name])
    for argv in attempts:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own binary, arguments we built
        if result.returncode == 0:
            log.info("embedded_postgres_os_user_created", user=name)
            return
        log.debug("embedded_postgres_os_user_create_failed", argv=argv[0], stderr=result.stderr)


def _lookup_user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _postgres_os_user() -> _RunAs | None:
    """None when we are not root; else the user postgres will run as (module docstring)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get(POSTGRES_OS_USER_ENV, "").strip()
    if wanted:
        entry = _lookup_user(wanted)
        if entry is None:
            raise ServerUnavailable(
                f"{POSTGRES_OS_USER_ENV}={wanted!r} names no OS user; create it or unset it"
            )
    else:
        entry = _lookup_user(_DEFAULT_OS_USER)
        if entry is None:
            _create_system_user(_DEFAULT_OS_USER)
            entry = _lookup_user(_DEFAULT_OS_USER)
        if entry is None:
            entry = _lookup_user("nobody")
            if entry is None:
                raise ServerUnavailable(
                    "PostgreSQL refuses to run as root and no unprivileged user is available: "
                    f"create one and set {POSTGRES_OS_USER_ENV}, run callwatch as a normal user, "
                    f"or set {DATABASE_URL_ENV}"
                )
            log.warning("embedded_postgres_runs_as_nobody")
    if entry.pw_uid == 0:
        raise ServerUnavailable(f"{POSTGRES_OS_USER_ENV} must name a non-root user")
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _can_traverse(st: os.stat_result, user: _RunAs) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _grant_traverse(path: Path, user: _RunAs) -> None:
    """Give ``user`` search permission (x, not r) on ``path``'s ancestors where it lacks it."""
    for directory in path.parents:
        st = directory.stat()
        if not _can_traverse(st, user):
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            log.warning(
                "embedded_postgres_granted_traverse", directory=str(directory), user=user.name
            )


def _chown_tree(root: Path, user: _RunAs) -> None:
    """Hand ``root`` and everything in it to ``user`` (a copied or root-made folder)."""
    for directory, dirnames, filenames in os.walk(root):
        os.chown(directory, user.uid, user.gid, follow_symlinks=False)
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(directory, name), user.uid, user.gid, follow_symlinks=False)


def _postmaster_pid(pgdata: Path) -> tuple[int, int | None, str] | None:
    """(pid, port, status) from ``postmaster.pid``; status is "ready" once serving."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return pid, port, status


def _major_version(pgdata: Path) -> int:
    try:
        return int((pgdata / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        return 0


def _postmaster_shmid(pgdata: Path) -> int | None:
    """The System V shared memory id from ``postmaster.pid`` (line 7: "key id")."""
    try:
        fields = (pgdata / "postmaster.pid").read_text().splitlines()[6].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _remove_sysv_segment(shmid: int) -> None:
    """``shmctl(shmid, IPC_RMID)``; destruction waits for the last detach, so it is safe."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(0), None)  # 0 = IPC_RMID


class EmbeddedPostgres:
    """A PostgreSQL cluster on loopback with its files in ``<data_dir>/postgres``.

    Layout: ``data/`` is PGDATA, ``port`` the remembered port, ``postgres.log`` the server log.
    The first start runs ``initdb`` into ``data.init/`` (superuser ``callwatch``, UTF-8, C
    locale, trust authentication), creates the ``callwatch`` database in single-user mode and
    only then renames it to ``data/``, so an interrupted first start never leaves a
    half-initialized cluster behind.

    ``durable=False`` is for tests: initdb skips its fsyncs and uses 1 MB WAL segments (a
    cluster is then cheap to copy), and the server runs with ``fsync=off``. Committed data
    still reaches the kernel before the commit is acknowledged (``synchronous_commit`` stays
    on), so killing the *server* loses nothing; only a crash of the machine could.
    ``settings`` adds ``-c name=value`` server settings.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binaries: PostgresBinaries | None = None,
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = Path(data_dir).resolve() / "postgres"
        self.pgdata = self.dir / "data"
        self._explicit_port = port
        self._binaries = binaries
        self._durable = durable
        self._settings = dict(settings or {})
        self._port: int | None = port
        self._proc: ServerProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = read_int(self.dir / "port")
        if self._port is None:
            raise ServerUnavailable("embedded PostgreSQL has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{self.port}/{POSTGRES_DB}"

    def url_for(self, database: str) -> str:
        return f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def start(self, timeout: float = 30.0) -> None:
        """Start (or adopt) the server, running initdb on first use; returns once it serves."""
        if self.running:
            return
        began = time.monotonic()
        deadline = began + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".lock"):
            if self._adopt():
                return
            binaries = self._binaries or find_postgres()
            run_as = _postgres_os_user()
            if run_as is not None:
                _grant_traverse(binaries.bin_dir, run_as)
                _grant_traverse(self.dir, run_as)
                if self.dir.stat().st_uid != run_as.uid or (
                    self.initialized and self.pgdata.stat().st_uid != run_as.uid
                ):
                    _chown_tree(self.dir, run_as)
            if not self.initialized:
                self._initialize(binaries, run_as, deadline)
            port = self._port = choose_port(self.dir / "port", self._explicit_port, "postgres")
            proc = self._proc = self._spawn(binaries, run_as, port)
            self._wait_ready(proc, port, deadline)
        log.info(
            "embedded_postgres_started",
            port=port,
            pid=proc.pid,
            seconds=round(time.monotonic() - began, 3),
        )

    def _run(
        self,
        argv: list[str],
        run_as: _RunAs | None,
        deadline: float,
        stdin: str | None = None,
    ) -> None:
        log_fd = open_log(self.log_path)
        try:
            result = subprocess.run(  # noqa: S603 - our own binaries, arguments we built
                argv,
                input=(stdin or "").encode(),
                stdout=log_fd,
                stderr=log_fd,
                cwd=self.dir,
                env=self._env(),
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except subprocess.TimeoutExpired:
            raise ServerStartError(
                f"{Path(argv[0]).name} timed out; log {self.log_path}:\n" + log_tail(self.log_path)
            ) from None
        finally:
            os.close(log_fd)
        if result.returncode != 0:
            raise ServerStartError(
                f"{Path(argv[0]).name} failed with status {result.returncode}; "
                f"log {self.log_path}:\n" + log_tail(self.log_path)
            )

    @staticmethod
    def _env() -> dict[str, str]:
        """A small, predictable environment: C locale, no PG* variables leaking in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    def _initialize(
        self, binaries: PostgresBinaries, run_as: _RunAs | None, deadline: float
    ) -> None:
        staging = self.dir / "data.init"
        if staging.exists():
            shutil.rmtree(staging)
        if self.pgdata.exists():
            # An empty or broken PGDATA without PG_VERSION: nothing in it is usable.
            shutil.rmtree(self.pgdata)
        began = time.monotonic()
        argv = [
            str(binaries.initdb),
            "-D",
            str(staging),
            "-U",
            POSTGRES_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self._durable:
            # Tests clone clusters: 1 MB WAL segments instead of 16 make them 15 MB smaller.
            argv += ["--no-sync", "--wal-segsize=1"]
        self._run(argv, run_as, deadline)
        self._run(
            [
                str(binaries.postgres),
                "--single",
                "-D",
                str(staging),
                "-c",
                "exit_on_error=on",
                *self._setting_args(staging),
                "template1",
            ],
            run_as,
            deadline,
            stdin=f"CREATE DATABASE {POSTGRES_DB} OWNER {POSTGRES_USER};\n",
        )
        staging.rename(self.pgdata)
        log.info("embedded_postgres_initialized", seconds=round(time.monotonic() - began, 3))

    def _setting_args(self, pgdata: Path) -> list[str]:
        settings: dict[str, str] = {}
        if self._durable and sys.platform == "linux" and _major_version(pgdata) >= 14:
            # After a crash PostgreSQL fsyncs every file of the cluster one by one before it
            # starts (seconds on a busy disk); syncfs does it in one call (well under one).
            settings["recovery_init_sync_method"] = "syncfs"
        if not self._durable:
            # mmap keeps dynamic shared memory in PGDATA: a killed test cluster leaves
            # nothing behind in /dev/shm once its folder is removed.
            settings.update(fsync="off", full_page_writes="off", dynamic_shared_memory_type="mmap")
        settings.update(self._settings)
        args: list[str] = []
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _spawn(self, binaries: PostgresBinaries, run_as: _RunAs | None, port: int) -> ServerProcess:
        log_fd = open_log(self.log_path)
        try:
            popen = subprocess.Popen(  # noqa: S603 - our own binary, arguments we built
                [
                    str(binaries.postgres),
                    "-D",
                    str(self.pgdata),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    "-c",
                    f"port={port}",
                    "-c",
                    "unix_socket_directories=",
                    *self._setting_args(self.pgdata),
                ],
                cwd=self.dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        finally:
            os.close(log_fd)
        return ServerProcess(popen.pid, popen)

    def _adopt(self) -> bool:
        """Take over a postmaster from an earlier run that still serves this PGDATA."""
        info = _postmaster_pid(self.pgdata)
        if info is None:
            return False
        pid, port, status = info
        if port is None or not pid_alive(pid) or "postgres" not in cmdline(pid):
            return False
        if self._explicit_port is not None and self._explicit_port != port:
            raise ServerStartError(
                f"a PostgreSQL (pid {pid}) already serves {self.pgdata} on port {port}, "
                f"not on the requested port {self._explicit_port}: stop it first"
            )
        proc = ServerProcess(pid)
        self._port, self._proc = port, proc
        if read_int(self.dir / "port") != port:
            write_atomic(self.dir / "port", f"{port}\n")
        self._wait_ready(proc, port, time.monotonic() + 30.0)
        log.info("embedded_postgres_adopted", port=port, pid=pid, status=status)
        return True

    def _wait_ready(self, proc: ServerProcess, port: int, deadline: float) -> None:
        status = ""
        while True:
            if not proc.alive:
                self._proc = None
                raise ServerStartError(
                    f"postgres exited during start-up; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            info = _postmaster_pid(self.pgdata)
            if info is not None and info[0] == proc.pid:
                status = info[2]
                if status == "ready" and tcp_accepts(port):
                    return
            if time.monotonic() >= deadline:
                proc.kill_group()
                self._proc = None
                raise ServerStartError(
                    f"postgres did not become ready in time (status {status!r}); "
                    f"log {self.log_path}:\n" + log_tail(self.log_path)
                )
            time.sleep(POLL_S)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down: "fast" (SIGINT: roll back sessions, checkpoint) or "immediate".

        "immediate" (SIGQUIT) exits without a checkpoint, as a crash would: the next start
        runs crash recovery from the WAL. A server that ignores either is killed.
        """
        signals = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}
        if mode not in signals:
            raise ValueError(f"unknown shutdown mode {mode!r}: use 'fast' or 'immediate'")
        proc = self._proc
        if proc is None:
            return
        with file_lock(self.dir / ".lock"):
            if proc.alive:
                proc.signal(signals[mode])
                if not proc.wait(timeout):
                    log.warning("embedded_postgres_stop_timeout", mode=mode)
                    proc.kill_group()
            proc.wait(timeout)
            self._proc = None
        log.info("embedded_postgres_stopped", port=self._port, mode=mode)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (fault tests).

        A killed server leaves shared memory behind, which the next start on this folder
        cleans up. A test cluster (``durable=False``) keeps its dynamic shared memory in PGDATA,
        so once it is dead its System V interlock segment is removed here too, as a reboot
        would: a test folder deleted after a kill then leaks nothing. A durable cluster keeps
        the segment, because it is how the next start finds the old dynamic segments in
        /dev/shm to remove them.
        """
        proc = self._proc
        if proc is None:
            return
        shmid = _postmaster_shmid(self.pgdata)
        proc.kill_group()
        if not self._durable and shmid is not None and not group_alive(proc.pid):
            _remove_sysv_segment(shmid)
        self._proc = None
        log.info("embedded_postgres_killed", port=self._port)
