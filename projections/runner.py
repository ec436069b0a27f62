"""Running views: open them, catch them up, rebuild them, follow the ledger live.

Catch-up and rebuild read the ledger in large batches and commit each batch (rows and
tracking) in one transaction. Following uses polling on SQLite and the library's
LISTEN/NOTIFY subscription on PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, Notification, OperationalError, Tracking
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteDatastore

from ledger.application import LedgerApplication, setup_lock
from ledger.collector import collector_paused
from projections.accuracy import PostgresAccuracyView, SQLiteAccuracyView
from projections.audit import PostgresAuditView, SQLiteAuditView
from projections.base import ViewItem, ViewRecorder
from projections.cost import PostgresCostView, SQLiteCostView
from projections.feed import FieldReader
from projections.lineage import PostgresLineageView, SQLiteLineageView
from projections.starts import StreamStarts

#: View name -> (SQLite class, PostgreSQL class).
VIEW_CLASSES: dict[str, tuple[type[Any], type[Any]]] = {
    "cost": (SQLiteCostView, PostgresCostView),
    "accuracy": (SQLiteAccuracyView, PostgresAccuracyView),
    "lineage": (SQLiteLineageView, PostgresLineageView),
    "audit": (SQLiteAuditView, PostgresAuditView),
}
VIEW_NAMES = tuple(VIEW_CLASSES)
DEFAULT_BATCH_SIZE = 20_000

Progress = Callable[[int], None]


class ViewProjection(Projection[Any]):
    """The library projection driving one view: decodes events and hands them over."""

    def __init__(self, view: ViewRecorder, app: LedgerApplication) -> None:
        super().__init__(view)
        self.app = app
        self.name = view.view_name
        self.reader = FieldReader(app, view.fields)
        # Where the view finds what a stream said in an earlier batch: the ledger itself.
        view.stream_starts = StreamStarts(self.reader)

    @property
    def view(self) -> ViewRecorder:
        """The view this projection writes (its tables and tracking)."""
        recorder: ViewRecorder = self._view
        return recorder

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Process one decoded event (the library's per-event entry point)."""
        event_type = type(domain_event).__name__
        attributes = self.reader.pick(event_type, vars(domain_event))
        item: ViewItem = (tracking.notification_id, event_type, attributes)
        self.view.process([item], Tracking(self.view.tracking_name, tracking.notification_id))

    def process_notifications(self, batch: Sequence[Notification]) -> int:
        """Process a batch of stored events in one transaction; returns how many skipped."""
        items = [self.reader.decode(n) for n in batch]
        return self.view.process(items, Tracking(self.view.tracking_name, batch[-1].id))

    def process_items(self, items: Sequence[ViewItem]) -> int:
        """Process a batch read by :attr:`reader` in one transaction; returns how many skipped."""
        return self.view.process(items, Tracking(self.view.tracking_name, items[-1][0]))


def open_view(app: LedgerApplication, name: str) -> ViewProjection:
    """Open (creating its tables if needed) the named view in the ledger's database."""
    sqlite_class, postgres_class = VIEW_CLASSES[name]
    datastore = app.factory.datastore  # type: ignore[attr-defined]
    view_class = sqlite_class if isinstance(datastore, SQLiteDatastore) else postgres_class
    view: ViewRecorder = view_class(datastore=datastore)
    # Creating the tables records the library's "__migration__" tracking row: processes
    # opening one new PostgreSQL ledger's views at once take turns, as the store does.
    with setup_lock(app.store):
        view.create_table()
    return ViewProjection(view, app)


def open_memory_view(app: LedgerApplication, name: str) -> ViewProjection:
    """A throw-away view in an in-memory SQLite database (for point-in-time answers)."""
    datastore = SQLiteDatastore(f"file:view-{uuid.uuid4().hex}?mode=memory&cache=shared")
    view: ViewRecorder = VIEW_CLASSES[name][0](datastore=datastore)
    view.create_table()
    return ViewProjection(view, app)


def catch_up(
    projection: ViewProjection,
    *,
    stop: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Process every event after the view's position (up to ``stop``); returns how many."""
    start = projection.view.position() + 1
    processed = 0
    while stop is None or start <= stop:
        with collector_paused():
            batch = projection.reader.read(start, stop, batch_size)
            if batch:
                projection.process_items(batch)
        if not batch:
            break
        processed += len(batch)
        if progress is not None:
            progress(len(batch))
        start = batch[-1][0] + 1
        if len(batch) < batch_size:
            break
    return processed


def rebuild(
    projection: ViewProjection,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Empty the view and process the whole ledger again; returns how many events.

    The view's secondary indexes are built once at the end (see ``ViewRecorder.reset``).
    """
    projection.view.reset()
    try:
        return catch_up(projection, batch_size=batch_size, progress=progress)
    finally:
        projection.view.build_indexes()


#: Seconds between attempts to reach a store that following lost, growing to the last.
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


def follow(
    projections: Sequence[ViewProjection],
    stopping: threading.Event,
    *,
    poll_interval: float = 1.0,
    on_batch: Callable[[str, int], None] | None = None,
    on_lost: Callable[[Exception], None] | None = None,
    on_resumed: Callable[[], None] | None = None,
) -> None:
    """Keep the views up to date until ``stopping`` is set.

    SQLite has no notifications, so it is polled; PostgreSQL views catch up whenever
    the library's LISTEN/NOTIFY subscription says something was written.

    Losing the store does not end following: a PostgreSQL restart or failover drops
    the listening connection, and a server that is down does not answer a catch-up.
    ``on_lost`` is told once, the views try again after a pause that grows to
    :data:`RETRY_DELAYS`' last, and once a catch-up succeeds ``on_resumed`` is told and
    following goes on (with a new subscription) from each view's tracked position, so
    nothing written meanwhile is skipped or applied twice.
    """
    failures = 0
    while not stopping.is_set():
        try:
            for _ in _catch_up_rounds(projections, stopping, poll_interval, on_batch):
                if failures:
                    failures = 0
                    if on_resumed is not None:
                        on_resumed()
            return
        except (OperationalError, InterfaceError) as error:
            if not failures and on_lost is not None:
                on_lost(error)
            stopping.wait(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
            failures += 1


def _catch_up_rounds(
    projections: Sequence[ViewProjection],
    stopping: threading.Event,
    poll_interval: float,
    on_batch: Callable[[str, int], None] | None,
) -> Iterator[None]:
    """Catch every view up, once now and again whenever there may be more; yield after
    each round, until ``stopping`` is set. A store that fails raises."""

    def catch_up_all() -> None:
        for projection in projections:
            done = catch_up(projection)
            if done and on_batch is not None:
                on_batch(projection.name, done)

    catch_up_all()
    yield
    app = projections[0].app
    if app.store.backend != "postgres":
        while not stopping.wait(poll_interval):
            catch_up_all()
            yield
        return
    subscription = app.recorder.subscribe(gt=min(p.view.position() for p in projections))
    ended = threading.Event()

    def stop_when_told() -> None:
        while not stopping.wait(0.1):
            if ended.is_set():
                return
        subscription.stop()

    threading.Thread(target=stop_when_told, daemon=True).start()
    try:
        with subscription:
            for _ in subscription:
                # The subscription only wakes us; catch-up reads in batches and tracks
                # exactly.
                catch_up_all()
                yield
                if stopping.is_set():
                    return
    finally:
        ended.set()
