"""dspy-ledger: an event-sourced audit ledger for DSPy programs.

>>> import dspy_ledger
>>> ledger = dspy_ledger.open()      # sqlite:///.dspy-ledger/ledger.db, or DSPY_LEDGER_URL
>>> ledger.instrument()              # every DSPy call from here on is recorded
>>> ledger.close()                   # commits what is queued (also runs at exit)

``open(..., otel=True)`` also sends every prediction, LM call and run as OpenTelemetry
spans to an OTLP backend (see ``dspy_ledger.telemetry`` and docs/opentelemetry.md).
"""

from __future__ import annotations

import os

# litellm would otherwise try to download its model price map at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from commands.scope import acting_as
from dspy_ledger.ledger import (
    Durability,
    Instrumentation,
    Ledger,
    LedgerStats,
    open_ledger,
)
from ledger.errors import (
    BudgetExceeded,
    GovernanceError,
    InvalidInputError,
    LedgerError,
    LedgerNotFoundError,
    PolicyViolation,
    RateLimited,
    RecordingError,
    StorageURLError,
    StoreUnavailableError,
    StreamNotFoundError,
)
from ledger.reading import RecordedEvent

open = open_ledger

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "Durability",
    "GovernanceError",
    "Instrumentation",
    "InvalidInputError",
    "Ledger",
    "LedgerError",
    "LedgerNotFoundError",
    "LedgerStats",
    "PolicyViolation",
    "RateLimited",
    "RecordedEvent",
    "RecordingError",
    "StorageURLError",
    "StoreUnavailableError",
    "StreamNotFoundError",
    "__version__",
    "acting_as",
    "open",
]
