"""A writer process that reads, acknowledges and discards drafts (bench section 1c).

It is :mod:`commands.writer_process` with the commit replaced by nothing: it reads the
pipe, decodes every draft, lingers and reports its counters exactly as the real writer
does, but builds no events and writes nothing to the store. Measured beside the real
writer, it tells how much of async recording's clock time is the writer's work on the
other core and how much is the hand-over itself. Never used outside the benchmarks.
"""

from __future__ import annotations

import sys

from commands import writer, writer_process


def discard(*_: object, **__: object) -> int:
    """Stand-in for :func:`commands.writer.commit_with_retry`: every draft "committed"."""
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the writer process with :func:`discard` as its commit."""
    writer.commit_with_retry = discard  # looked up by writer_process.main when it starts
    return writer_process.main(argv)


if __name__ == "__main__":
    sys.exit(main())
