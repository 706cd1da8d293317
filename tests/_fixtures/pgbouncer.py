"""A real PgBouncer in transaction pooling mode, in front of the session's real PostgreSQL.

What a pooler changes is what the tests are about: the backend pid a client is given is
PgBouncer's own, cancel requests travel through PgBouncer, consecutive transactions of one client
may run on different server connections, and a prepared statement lives on a server connection,
not on the client's. A fake has none of that. Debian's ``pgbouncer`` package provides the binary
(``.ci/run`` installs it); it runs as the same unprivileged account as PostgreSQL, in a temporary
directory, on a free 127.0.0.1 port, with trust authentication.

The class is usable without pytest, so ``bench/`` can put one in front of its own server::

    with PostgresServer.start_new() as pg, PgBouncer.start_new(pg) as bouncer: ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

from .postgres import PostgresServer, _free_port, _missing

__all__ = ["PgBouncer", "find_pgbouncer", "pgbouncer"]

_CONFIG = """\
[databases]
* = host={pg.host} port={pg.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
pool_mode = {pool_mode}
max_client_conn = 500
default_pool_size = 20
server_reset_query =
server_check_delay = 0
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""


def find_pgbouncer() -> Path | None:
    """The ``pgbouncer`` binary on PATH or where Debian puts it, if any."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return Path(found) if os.access(found, os.X_OK) else None


@dataclass
class PgBouncer:
    """A pgbouncer process and its directory; clients connect to ``host:port``."""

    binary: Path
    server: PostgresServer
    root: Path
    port: int
    pool_mode: str = "transaction"
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start_new(
        cls, server: PostgresServer, binary: Path | None = None, pool_mode: str = "transaction"
    ) -> Self:
        binary = binary or find_pgbouncer()
        if binary is None:
            raise FileNotFoundError("pgbouncer not found (Debian: apt-get install -y pgbouncer)")
        # pgbouncer refuses to run as root: it runs as PostgreSQL's service account, which must
        # be able to reach the directory ($TMPDIR may be under /root).
        parent = "/tmp" if server.account is not None else None
        root = Path(tempfile.mkdtemp(prefix="request-aborted-pgbouncer-", dir=parent))
        bouncer = cls(binary, server, root, _free_port(), pool_mode)
        try:
            (root / "userlist.txt").write_text(f'"{server.user}" ""\n')
            (root / "pgbouncer.ini").write_text(
                _CONFIG.format(pg=server, port=bouncer.port, root=root, pool_mode=pool_mode)
            )
            if server.account is not None:
                for path in (root, root / "userlist.txt", root / "pgbouncer.ini"):
                    os.chown(path, *server.account)
            bouncer.start()
        except BaseException:
            bouncer.close()
            raise
        return bouncer

    def url(self, database: str, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL of ``database`` through this pgbouncer."""
        return f"postgresql+{driver}://{self.server.user}@{self.host}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        account: dict[str, Any] = {}
        if self.server.account is not None:
            uid, gid = self.server.account
            account = {"user": uid, "group": gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [str(self.binary), "-q", str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **account,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {exc}\n{self.log()}") from exc
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: pgbouncer closes every client and server connection at once."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def pgbouncer(postgres: PostgresServer) -> Iterator[PgBouncer]:
    """pgbouncer in transaction mode before the session's PostgreSQL (skipped without it, failed
    on CI)."""
    binary = find_pgbouncer()
    if binary is None:
        _missing("pgbouncer not found (Debian: apt-get install -y pgbouncer)")
    assert binary is not None
    bouncer = PgBouncer.start_new(postgres, binary)
    try:
        yield bouncer
    finally:
        bouncer.close()
