"""What the engine needs when ``DATABASE_URL`` leads to PgBouncer in transaction pooling mode.

In transaction mode consecutive transactions of one client may run on different server
connections, so nothing a driver leaves on a server connection between transactions can be
relied on. Both drivers leave prepared statements there: asyncpg names and caches one per
statement, psycopg prepares a statement after its fifth use; through PgBouncer 1.18 another
client then meets "prepared statement ... does not exist" or "... already exists" (a 500). The
URL says so with ``?pgbouncer=transaction`` (the demo's own flag, removed before the driver sees
it), and this turns into the settings docs/sqlalchemy.md lists: asyncpg prepares every statement
under a fresh name and caches none, psycopg prepares none. The cancellation side connection is
off, because the pid a client is given by PgBouncer is not a backend's; cancel requests go through
PgBouncer, which forwards them (the library finds out by itself too; saying so saves it a try).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL

__all__ = ["PoolerOptions", "pooler_options"]

FLAG = "pgbouncer"


@dataclass(frozen=True, slots=True)
class PoolerOptions:
    """The URL the driver gets, its extra connect arguments, and whether to cancel by pid."""

    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)
    side_connection: bool = True


def pooler_options(url: URL) -> PoolerOptions:
    """Read and remove ``?pgbouncer=transaction|session`` from ``url``."""
    mode = url.query.get(FLAG)
    if mode is None:
        return PoolerOptions(url)
    clean = url.difference_update_query([FLAG])
    if mode == "session":  # one server connection per client: only the pids are PgBouncer's
        return PoolerOptions(clean, side_connection=False)
    if mode != "transaction":
        raise ValueError(f"DATABASE_URL: {FLAG} must be transaction or session, not {mode!r}")
    if url.get_driver_name() == "asyncpg":
        args: dict[str, Any] = {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _fresh_statement_name,
        }
    else:
        args = {"prepare_threshold": None}
    return PoolerOptions(clean, args, side_connection=False)


def _fresh_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"
