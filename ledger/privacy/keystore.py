"""The subject key table: one AES-256 key per data subject, wrapped by the master key.

The table lives in the ledger's own database (SQLite ``privacy_keys``, PostgreSQL
``dspyledger_privacy_keys`` in the ledger's schema), so every process sharing the
store shares the keys. A subject has at most one *live* key (a partial unique index
makes two processes creating it at once agree on one). Forgetting a subject sets its
wrapped keys to NULL: the ciphertext stays (and with it the Merkle log), the key is
gone. ``privacy_subject_streams`` remembers which streams hold a subject's data, so
an erasure can tell the views which copies to purge.

Unwrapped keys are cached for ``cache_seconds`` (default 5): a key forgotten by
another process stops decrypting here within that time; in this process at once.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError
from eventsourcing.sqlite import SQLiteDatastore

from ledger.errors import MasterKeyError, PrivacyError
from ledger.privacy.master import KEY_BYTES, MASTER_KEY_ENV, MasterKey

if TYPE_CHECKING:  # the PostgreSQL driver is imported only by ledgers that use it
    from eventsourcing.postgres import PostgresDatastore

DEFAULT_CACHE_SECONDS = 5.0

_TABLES = {
    "keys": (
        "(key_id TEXT PRIMARY KEY, subject TEXT NOT NULL, wrapped {blob}, "
        "master_key_id TEXT NOT NULL, created_at TEXT NOT NULL, destroyed_at TEXT)"
    ),
    "streams": "(subject TEXT NOT NULL, stream_id TEXT NOT NULL, PRIMARY KEY (subject, stream_id))",
}


@dataclass(frozen=True)
class SubjectStatus:
    """What the key table knows about one subject."""

    subject: str
    live_keys: int
    destroyed_keys: int
    last_destroyed_at: str | None
    streams: list[str]


class SubjectKeys:
    """Creates, unwraps and destroys data subject keys in the ledger's database."""

    def __init__(
        self,
        datastore: SQLiteDatastore | PostgresDatastore,
        master: MasterKey | None = None,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ) -> None:
        self.datastore = datastore
        self.master = master
        self.cache_seconds = cache_seconds
        self._postgres = not isinstance(datastore, SQLiteDatastore)
        self._names = self._table_names()
        self._lock = threading.Lock()
        self._created = False
        self._by_id: dict[str, tuple[bytes | None, float]] = {}
        self._live: dict[str, tuple[str, bytes, float]] = {}
        self._seen_streams: set[tuple[str, str]] = set()

    # -- tables ----------------------------------------------------------------------

    def _table_names(self) -> dict[str, str]:
        names = {"keys": "privacy_keys", "streams": "privacy_subject_streams"}
        if self._postgres:
            schema = self.datastore.schema  # type: ignore[union-attr]
            return {k: f'"{schema}"."dspyledger_{n}"' for k, n in names.items()}
        return names

    @property
    def table_names(self) -> list[str]:
        """The qualified names of the key store's tables."""
        return list(self._names.values())

    def _sql(self, text: str) -> str:
        text = text.format(**self._names)
        return text.replace("?", "%s") if self._postgres else text

    @contextmanager
    def _cursor(self, *, commit: bool) -> Iterator[Any]:
        self._ensure_tables()
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def _rows(self, cursor: Any, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor.execute(self._sql(text), tuple(params))
        return [dict(row) for row in cursor.fetchall()]

    def _ensure_tables(self) -> None:
        if self._created:
            return
        try:
            self._create_tables()
        except IntegrityError:
            # PostgreSQL: another process created the tables at the same moment
            # (CREATE TABLE IF NOT EXISTS races on the catalogue); they exist now.
            self._create_tables()
        self._created = True

    def _create_tables(self) -> None:
        blob = "bytea" if self._postgres else "BLOB"
        with self.datastore.transaction(commit=True) as cursor:
            for name, columns in _TABLES.items():
                cursor.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._names[name]} {columns.format(blob=blob)}"
                )
            index = "dspyledger_privacy_live_key" if self._postgres else "privacy_live_key"
            cursor.execute(
                self._sql(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {{keys}} (subject) "
                    "WHERE destroyed_at IS NULL"
                )
            )

    # -- master key ------------------------------------------------------------------

    def require_master(self) -> MasterKey:
        """The master key; MasterKeyError saying how to give one if there is none."""
        if self.master is None:
            msg = (
                "This needs the ledger's master key; set DSPY_LEDGER_MASTER_KEY (or "
                "DSPY_LEDGER_MASTER_KEY_FILE), or pass master_key= to dspy_ledger.open()."
            )
            raise MasterKeyError(msg)
        return self.master

    def check_master(self) -> None:
        """Raise MasterKeyError if live keys were wrapped by another master key."""
        if self.master is None:
            return
        with self._cursor(commit=False) as c:
            rows = self._rows(
                c, "SELECT DISTINCT master_key_id FROM {keys} WHERE wrapped IS NOT NULL"
            )
        others = sorted({r["master_key_id"] for r in rows} - {self.master.key_id})
        if others:
            msg = (
                f"The master key given ({self.master.key_id}) is not the one this ledger's "
                f"subject keys were wrapped with ({', '.join(others)}); nothing was "
                f"decrypted or changed: give the right key in {MASTER_KEY_ENV}."
            )
            raise MasterKeyError(msg)

    # -- keys ------------------------------------------------------------------------

    def key_for_writing(self, subject: str, stream_id: str) -> tuple[str, bytes]:
        """The subject's live key (created if it has none), noting the stream it is for."""
        now = time.monotonic()
        with self._lock:
            cached = self._live.get(subject)
        if cached is not None and cached[2] > now:
            key_id, key = cached[0], cached[1]
        else:
            key_id, key = self._load_or_create(subject)
            with self._lock:
                self._live[subject] = (key_id, key, now + self.cache_seconds)
                self._by_id[key_id] = (key, now + self.cache_seconds)
        if (subject, stream_id) not in self._seen_streams:
            self.note_streams([(subject, stream_id)])
        return key_id, key

    def note_streams(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Note, in one transaction, the streams these ``(subject, stream id)`` pairs'
        events are about to be sealed in, ahead of those events.

        :meth:`key_for_writing` notes each new pair it sees with a commit of its own:
        one per prediction, as each prediction is a stream of its own. A batch of
        events noted here first costs one commit, and the pairs are then known.
        """
        new = [pair for pair in dict.fromkeys(pairs) if pair not in self._seen_streams]
        if not new:
            return
        with self._cursor(commit=True) as c:
            c.executemany(
                self._sql("INSERT INTO {streams} VALUES (?, ?) ON CONFLICT DO NOTHING"), new
            )
        self._seen_streams.update(new)

    def _load_or_create(self, subject: str) -> tuple[str, bytes]:
        master = self.require_master()
        new_id = uuid.uuid4().hex
        new_key = secrets.token_bytes(KEY_BYTES)
        with self._cursor(commit=True) as c:
            c.execute(
                self._sql(
                    "INSERT INTO {keys} VALUES (?, ?, ?, ?, ?, NULL) "
                    "ON CONFLICT (subject) WHERE destroyed_at IS NULL DO NOTHING"
                ),
                (
                    new_id,
                    subject,
                    master.wrap(new_key, new_id),
                    master.key_id,
                    _now(),
                ),
            )
            rows = self._rows(
                c,
                "SELECT key_id, wrapped FROM {keys} WHERE subject = ? AND destroyed_at IS NULL",
                (subject,),
            )
        key_id = str(rows[0]["key_id"])
        return key_id, master.unwrap(bytes(rows[0]["wrapped"]), key_id)

    def key_by_id(self, key_id: str) -> bytes | None:
        """The key with this id, or None if it was destroyed (its subject forgotten)."""
        now = time.monotonic()
        with self._lock:
            cached = self._by_id.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self._cursor(commit=False) as c:
            rows = self._rows(c, "SELECT wrapped FROM {keys} WHERE key_id = ?", (key_id,))
        if not rows:
            msg = (
                f"Subject key {key_id} is missing from the key table; the table was altered "
                "outside dspy-ledger."
            )
            raise PrivacyError(msg)
        wrapped = rows[0]["wrapped"]
        key = None if wrapped is None else self.require_master().unwrap(bytes(wrapped), key_id)
        with self._lock:
            self._by_id[key_id] = (key, now + self.cache_seconds)
        return key

    def status(self, subject: str) -> SubjectStatus:
        """How many live and destroyed keys the subject has, and its streams."""
        with self._cursor(commit=False) as c:
            keys = self._rows(
                c, "SELECT wrapped, destroyed_at FROM {keys} WHERE subject = ?", (subject,)
            )
            streams = self._rows(
                c,
                "SELECT stream_id FROM {streams} WHERE subject = ? ORDER BY stream_id",
                (subject,),
            )
        destroyed = [str(k["destroyed_at"]) for k in keys if k["destroyed_at"] is not None]
        return SubjectStatus(
            subject=subject,
            live_keys=sum(1 for k in keys if k["destroyed_at"] is None),
            destroyed_keys=len(destroyed),
            last_destroyed_at=max(destroyed) if destroyed else None,
            streams=[str(s["stream_id"]) for s in streams],
        )

    def destroy(self, subject: str) -> int:
        """Destroy every live key of the subject; return how many were destroyed."""
        with self._cursor(commit=True) as c:
            live = self._rows(
                c,
                "SELECT key_id FROM {keys} WHERE subject = ? AND destroyed_at IS NULL",
                (subject,),
            )
            c.execute(
                self._sql(
                    "UPDATE {keys} SET wrapped = NULL, destroyed_at = ? "
                    "WHERE subject = ? AND destroyed_at IS NULL"
                ),
                (_now(), subject),
            )
            count = len(live)
        with self._lock:
            self._live.pop(subject, None)
            self._by_id.clear()
        return count

    def rewrap(self, new_master: MasterKey) -> int:
        """Wrap every live key under ``new_master`` in one transaction; return how many.

        Every key is unwrapped with the current master key before anything is written,
        so a wrong current key raises MasterKeyError and changes nothing.
        """
        master = self.require_master()
        with self._cursor(commit=True) as c:
            rows = self._rows(c, "SELECT key_id, wrapped FROM {keys} WHERE wrapped IS NOT NULL")
            keys = [_unwrapped(master, row) for row in rows]
            for key_id, key in keys:
                c.execute(
                    self._sql("UPDATE {keys} SET wrapped = ?, master_key_id = ? WHERE key_id = ?"),
                    (new_master.wrap(key, key_id), new_master.key_id, key_id),
                )
        self.master = new_master
        return len(keys)


def _unwrapped(master: MasterKey, row: dict[str, Any]) -> tuple[str, bytes]:
    key_id = str(row["key_id"])
    return key_id, master.unwrap(bytes(row["wrapped"]), key_id)


def _now() -> str:
    return datetime.now(UTC).isoformat()
