"""Automatic checkpoints: a background thread that checkpoints the ledger as it grows.

Every ``interval`` seconds it looks at the ledger's last position; once ``every`` or
more events were stored since the last automatic checkpoint (or since the ledger
was opened), it hashes them into the Merkle log and records a checkpoint (signed if
a key is configured) in the ledger, like ``dspy-ledger checkpoint`` does.

Configured by the environment (read when a ledger is opened):

* ``DSPY_LEDGER_CHECKPOINT_EVERY``: events between checkpoints (default 10000; 0 turns
  automatic checkpoints off);
* ``DSPY_LEDGER_CHECKPOINT_INTERVAL``: seconds between looks (default 10);
* ``DSPY_LEDGER_CHECKPOINT_KEY``: an Ed25519 PEM private key to sign them with.

A failure is logged and retried at the next look; it never disturbs recording.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ledger.errors import InvalidInputError

logger = logging.getLogger("dspy_ledger")

DEFAULT_EVERY = 10_000
DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True)
class CheckpointPolicy:
    """When automatic checkpoints are taken, and with which key."""

    every: int = DEFAULT_EVERY
    interval: float = DEFAULT_INTERVAL
    key_path: str | None = None

    @property
    def enabled(self) -> bool:
        """False when ``every`` is 0."""
        return self.every > 0

    @classmethod
    def from_environment(cls) -> CheckpointPolicy:
        """The policy the ``DSPY_LEDGER_CHECKPOINT_*`` variables describe."""
        every = _number("DSPY_LEDGER_CHECKPOINT_EVERY", DEFAULT_EVERY, int)
        interval = _number("DSPY_LEDGER_CHECKPOINT_INTERVAL", DEFAULT_INTERVAL, float)
        return cls(int(every), float(interval), os.environ.get("DSPY_LEDGER_CHECKPOINT_KEY"))


def _number(name: str, default: float, kind: Callable[[str], float]) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0 or (kind is float and value == 0):
        msg = f"{name}={text!r} is not a valid setting; give a positive number."
        raise InvalidInputError(msg)
    return value


class AutoCheckpointer:
    """The background thread taking checkpoints as :class:`CheckpointPolicy` says."""

    def __init__(
        self,
        policy: CheckpointPolicy,
        last_position: Callable[[], int],
        take: Callable[[], int],
    ) -> None:
        """``take`` records a checkpoint and returns the ledger's position after it."""
        self.policy = policy
        self._last_position = last_position
        self._take = take
        self.covered = last_position()
        self.taken = 0
        #: CPU seconds spent taking checkpoints (hashing events into the log, recording
        #: them): what they took from other threads of this process, waits excluded.
        self.cpu_seconds = 0.0
        self._stopping = threading.Event()
        self._taking = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name="dspy-ledger-checkpoints", daemon=True
        )

    def start(self) -> AutoCheckpointer:
        """Start looking (returns self)."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.wait(self.policy.interval):
            self.tick()

    def tick(self) -> bool:
        """Take a checkpoint if enough events were stored; True if one was taken."""
        with self._taking:
            try:
                if self._last_position() - self.covered < self.policy.every:
                    return False
                started = time.thread_time()
                self.covered = self._take()
            except Exception as error:  # never disturb recording; retry at the next look
                logger.warning("dspy-ledger: automatic checkpoint failed: %s", error)
                return False
            self.cpu_seconds += time.thread_time() - started
            self.taken += 1
            return True

    @property
    def busy(self) -> bool:
        """Whether a look or a checkpoint is in progress (or checkpoints are paused)."""
        return self._taking.locked()

    def wait(self) -> None:
        """Wait for a checkpoint in progress, if any, to finish."""
        with self._taking:
            pass

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Take no checkpoint inside the block (one in progress finishes first).

        A look due meanwhile waits, and takes its checkpoint when the block ends.
        """
        with self._taking:
            yield

    def stop(self) -> None:
        """Stop looking and wait for a checkpoint in progress to finish."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
