"""The writer process: builds and commits the events of a recording process's drafts.

Started by :class:`commands.process_writer.ProcessWriter` (never by users), it reads
frames (:mod:`commands.writer_protocol`) from its standard input and group-commits the
drafts with the same :class:`~commands.writer.AsyncWriter` an in-process ledger uses,
reporting its counters on standard output after every commit. Turning drafts into
events (payload conversion, redaction, encryption, JSON) is most of the cost of
recording; here it runs on another core, beside the program rather than inside it.

When its input ends (the ledger closed, or the recording process died) it commits
everything it has received, retrying for up to :data:`FINAL_FLUSH_SECONDS` while the
store is away, and exits. It ignores Ctrl-C and runs in a session of its own, so an
interrupt aimed at the program never loses what the program already recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from uuid import UUID

from commands.writer_protocol import (
    CONFIG,
    DRAFTS,
    FLUSH,
    STATUS,
    UnreadableDraft,
    WriterConfig,
    WriterStatus,
    encode,
    loads,
    read_frame,
)

#: How long the writer keeps trying to commit what it holds once its input has ended.
FINAL_FLUSH_SECONDS = 60.0

logger = logging.getLogger("dspy_ledger")


def main() -> int:
    """Run the writer until its input ends; the exit status says whether all was written."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real standard output; anything printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="dspy-ledger writer: %(message)s")
    source = sys.stdin.buffer
    first = read_frame(source)
    config = loads(first[1]) if first is not None and first[0] == CONFIG else None
    if not isinstance(config, WriterConfig):
        logger.error("started without a configuration; exiting.")
        return 2

    from commands.drafts import VersionDraft
    from commands.handlers import DraftHandler
    from commands.portable_drafts import decode_draft
    from commands.redaction import build_redactors
    from commands.writer import AsyncWriter, WriterStats
    from ledger.application import LedgerApplication
    from ledger.privacy.master import MasterKey
    from ledger.storage import parse_url

    app = LedgerApplication(parse_url(config.url), create=False)
    if config.master_key is not None:
        app.subject_keys.master = MasterKey(config.master_key)
    handler = DraftHandler(app, max_string_bytes=config.max_string_bytes)
    handler.redactors = build_redactors(config.redactors)

    lock = threading.Lock()
    parent_listening = [True]

    def report(stats: WriterStats) -> None:
        status = WriterStatus(
            stats.committed, stats.unbuildable, stats.batches, stats.retries, stats.last_error
        )
        with lock:
            if not parent_listening[0]:
                return
            try:
                out.write(encode(STATUS, status))
                out.flush()
            except OSError:  # the recording process is gone; keep committing anyway
                parent_listening[0] = False

    versions: dict[UUID, VersionDraft] = {}  # program versions sent once, named after
    writer: AsyncWriter | None = None
    writer = AsyncWriter(
        handler,
        on_commit=report,
        on_error=lambda _error: report(writer.stats) if writer is not None else None,
    )
    while (frame := read_frame(source)) is not None:
        kind, body = frame
        if kind == DRAFTS:
            try:
                draft = decode_draft(body, versions)
            except Exception as error:
                draft = UnreadableDraft(f"{type(error).__name__}: {error}")
            writer.submit(draft)
        elif kind == FLUSH:
            writer.nudge()
    try:
        writer.close(timeout=FINAL_FLUSH_SECONDS)
    except Exception as error:
        logger.error("%s", error)
        return 1
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
