"""A PostgreSQL connection pool that checks a connection without a round trip to the server.

The ledger's pool used to check every connection it handed out with an empty query (the
library's ``POSTGRES_PRE_PING``, psycopg_pool's ``check_connection``), so that a connection
the server had dropped (a restart, a failover, ``pg_terminate_backend``) was replaced
before anyone used it. That query cost a round trip per checkout: about 100-150 µs of wall
time and 60-100 µs of client CPU per commit here, a sixth of a three-event commit
(docs/performance.md, items 23 and 24). And when the server had dropped every connection at
once, psycopg_pool's check loop slept after each connection that failed its check (one
second, then two, then four): a caller that does not retry (the governance counters, the
key store) got ``PoolTimeout`` after five seconds, and recording, which retries, stalled
for six to ten.

A server that drops a connection tells the client: it sends a ``FATAL`` message and closes
the socket, or the client's kernel sees the socket closed. Either way the socket becomes
readable. A healthy idle connection's socket has nothing to read. So
:class:`LivenessCheckingPool` looks at the socket (one ``poll`` with no wait), and only when
something is there asks the server with the empty query, which also consumes whatever was
waiting (a notification, a parameter change). A connection found dead is closed and handed
back, which makes the pool replace it, and the next one is looked at straight away: after a
restart the first caller walks past every dead connection in microseconds and waits only
for a new one to connect (8-15 ms here).

Neither check sees a peer that vanished without a word (a network partition with no
reset): the socket stays quiet, and the empty query would have waited on it too. Nor a
server that drops the connection between the check and the statement; the event store's
own calls retry that.
"""

from __future__ import annotations

import select
from time import monotonic
from typing import Any

import psycopg
from eventsourcing.postgres import ConnectionPool, PostgresDatastore
from psycopg import pq
from psycopg_pool import PoolTimeout


def connection_is_usable(conn: psycopg.Connection[Any]) -> bool:
    """Return whether ``conn`` can be used, asking the server only if its socket has news."""
    pgconn = conn.pgconn
    if conn.closed or pgconn.status != pq.ConnStatus.OK:
        return False
    idle = pgconn.transaction_status == pq.TransactionStatus.IDLE
    if idle and not _socket_readable(conn.fileno()):
        return True
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


def _socket_readable(fileno: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fileno, select.POLLIN)
        return bool(poller.poll(0))
    # Windows has no poll(); there select() takes sockets of any number.
    readable, _, _ = select.select([fileno], [], [], 0)
    return bool(readable)


class LivenessCheckingPool(ConnectionPool[Any]):
    """The library's pool, handing out only connections that :func:`connection_is_usable`."""

    def getconn(self, timeout: float | None = None) -> Any:
        """Return a usable connection, replacing dead ones, within ``timeout`` seconds."""
        wait = self.timeout if timeout is None else timeout
        deadline = monotonic() + wait
        while True:
            try:
                conn = super().getconn(timeout=deadline - monotonic())
            except PoolTimeout:
                msg = f"couldn't get a connection after {wait:.2f} sec"
                raise PoolTimeout(msg) from None
            try:
                usable = connection_is_usable(conn)
            except BaseException:  # Ctrl-C while asking: give the connection back
                self.putconn(conn)
                raise
            if usable:
                return conn
            # Closed and handed back, the pool counts it lost and connects a replacement.
            conn.close()
            self.putconn(conn)

    @classmethod
    def replacing_pool_of(
        cls, datastore: PostgresDatastore, *, application_name: str | None = None
    ) -> None:
        """Give ``datastore`` a pool of this class, configured as the one it made, whose
        connections name themselves ``application_name`` to the server if given.

        The library's datastore makes its pool itself, closed; this one takes its place
        before anything opens it.
        """
        made = datastore.pool
        kwargs = made.kwargs
        if application_name is not None and isinstance(kwargs, dict):
            kwargs = {**kwargs, "application_name": application_name}
        datastore.pool = cls(
            get_password_func=made.get_password_func,
            connection_class=made.connection_class,
            kwargs=kwargs,
            min_size=made.min_size,
            max_size=made.max_size,
            open=False,
            configure=datastore.after_connect_func(),
            timeout=made.timeout,
            max_waiting=made.max_waiting,
            max_lifetime=made.max_lifetime,
        )
