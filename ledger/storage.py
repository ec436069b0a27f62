"""Store URLs: which database a ledger lives in.

One URL picks the store:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (embedded, the
  default is ``sqlite:///.dspy-ledger/ledger.db``); ``sqlite:///:memory:`` for a
  throw-away ledger in one process.
- ``postgresql://user:password@host:5432/dbname`` (``postgres://`` is accepted too), with
  an optional ``?schema=NAME`` to keep the ledger's tables in a schema of their own.

The URL is read from the ``--db`` option, else ``DSPY_LEDGER_URL``, else the default.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.compression import compressor_topic
from ledger.errors import StorageURLError

#: Environment variable that names the store when no URL is given explicitly.
URL_ENV_VAR = "DSPY_LEDGER_URL"
#: The embedded store used when nothing else is configured.
DEFAULT_URL = "sqlite:///.dspy-ledger/ledger.db"
#: The eventsourcing factory for PostgreSQL: the library's, inserting batches as binary
#: arrays (ledger/postgres_recorder.py). A topic, so SQLite users never import psycopg.
POSTGRES_PERSISTENCE_TOPIC = "ledger.postgres_recorder:LedgerPostgresFactory"
#: How the ledger's PostgreSQL connections name themselves to the server
#: (``pg_stat_activity.application_name``), unless ``PGAPPNAME`` names them otherwise.
POSTGRES_APPLICATION_NAME = "dspy-ledger"


def postgres_application_name() -> str | None:
    """The ``application_name`` to connect with: None where ``PGAPPNAME`` is set, which
    libpq then uses itself."""
    return None if os.environ.get("PGAPPNAME") else POSTGRES_APPLICATION_NAME


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL and the eventsourcing settings it stands for."""

    url: str
    backend: str  # "sqlite" or "postgres"
    sqlite_path: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    dbname: str | None = None
    schema: str | None = None
    # Names this process's in-memory database, so two in-memory ledgers never share one.
    memory_tag: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)

    @property
    def masked(self) -> str:
        """The URL with any password replaced by ``***``, safe to print."""
        if self.backend == "sqlite" or not self.password:
            return self.url
        user = self.user or ""
        port = f":{self.port}" if self.port else ""
        query = f"?schema={self.schema}" if self.schema else ""
        return f"postgresql://{user}:***@{self.host}{port}/{self.dbname}{query}"

    @property
    def is_memory(self) -> bool:
        """True for an in-memory SQLite ledger, which lives only in this process."""
        return self.backend == "sqlite" and self.sqlite_path == ":memory:"

    def eventsourcing_env(self) -> dict[str, str]:
        """Return the eventsourcing environment settings for this store."""
        if self.backend == "sqlite":
            assert self.sqlite_path is not None
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": (
                    f"file:ledger-{self.memory_tag}?mode=memory&cache=shared"
                    if self.is_memory
                    else self.sqlite_path
                ),
                "SQLITE_LOCK_TIMEOUT": "30",
                "COMPRESSOR_TOPIC": compressor_topic(),
            }
        env = {
            "PERSISTENCE_MODULE": POSTGRES_PERSISTENCE_TOPIC,
            "POSTGRES_DBNAME": self.dbname or "",
            "POSTGRES_HOST": self.host or "127.0.0.1",
            "POSTGRES_PORT": str(self.port or 5432),
            "POSTGRES_USER": self.user or "",
            "POSTGRES_PASSWORD": self.password or "",
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "10",
            "COMPRESSOR_TOPIC": compressor_topic(),
        }
        if self.schema:
            env["POSTGRES_SCHEMA"] = self.schema
        return env


def resolve_url(url: str | None = None) -> str:
    """Return the URL to use: the given one, else ``DSPY_LEDGER_URL``, else the default."""
    return url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL


def parse_url(url: str) -> StoreURL:
    """Parse a store URL, raising :class:`StorageURLError` with a clear sentence if bad."""
    if "://" not in url:
        msg = (
            f"The ledger URL {url!r} has no scheme; use sqlite:///path/ledger.db or "
            "postgresql://user:password@host:5432/dbname."
        )
        raise StorageURLError(msg)
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(url, rest)
    if scheme in {"postgresql", "postgres", "postgresql+psycopg"}:
        return _parse_postgres(url)
    msg = f"The ledger URL scheme {scheme!r} is not supported; use sqlite:/// or postgresql://."
    raise StorageURLError(msg)


def _parse_sqlite(url: str, rest: str) -> StoreURL:
    if not rest.startswith("/"):
        msg = (
            f"The SQLite URL {url!r} must have three slashes before a relative path "
            "(sqlite:///ledger.db) or four before an absolute one (sqlite:////tmp/ledger.db)."
        )
        raise StorageURLError(msg)
    path = unquote(rest[1:])
    if not path:
        msg = f"The SQLite URL {url!r} names no file; add a path, e.g. sqlite:///ledger.db."
        raise StorageURLError(msg)
    if path != ":memory:":
        path = str(Path(path).expanduser())
    return StoreURL(url=url, backend="sqlite", sqlite_path=path)


def _parse_postgres(url: str) -> StoreURL:
    parts = urlsplit(url)
    dbname = unquote(parts.path.lstrip("/"))
    try:
        port = parts.port
    except ValueError:
        msg = f"The PostgreSQL URL {_mask(url)!r} has a port that is not a number."
        raise StorageURLError(msg) from None
    if not dbname:
        msg = (
            f"The PostgreSQL URL {_mask(url)!r} names no database; "
            "add one, e.g. postgresql://user@localhost:5432/ledger."
        )
        raise StorageURLError(msg)
    if not parts.hostname:
        msg = f"The PostgreSQL URL {_mask(url)!r} names no host."
        raise StorageURLError(msg)
    query = parse_qs(parts.query)
    unknown = set(query) - {"schema"}
    if unknown:
        msg = (
            f"The PostgreSQL URL {_mask(url)!r} has unknown options {sorted(unknown)}; "
            "only ?schema=NAME is understood."
        )
        raise StorageURLError(msg)
    schema = query.get("schema", [None])[0]
    return StoreURL(
        url=url,
        backend="postgres",
        host=parts.hostname,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        dbname=dbname,
        schema=schema,
    )


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
