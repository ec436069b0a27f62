"""Aggregates of the audit ledger and the events they record.

Event class names are a public contract (see docs/events.md): they are never renamed.
"""

from ledger.domain.base import LedgerAggregate, LedgerEvent
from ledger.domain.dataset import Dataset
from ledger.domain.evaluation import Evaluation
from ledger.domain.governance import ExecutionDenial, GovernanceRules
from ledger.domain.optimization import OptimizationRun
from ledger.domain.prediction import Prediction
from ledger.domain.price import PriceTable
from ledger.domain.program_version import ProgramVersion
from ledger.domain.replay import Replay
from ledger.domain.subject import DataSubject

__all__ = [
    "DataSubject",
    "Dataset",
    "Evaluation",
    "ExecutionDenial",
    "GovernanceRules",
    "LedgerAggregate",
    "LedgerEvent",
    "OptimizationRun",
    "Prediction",
    "PriceTable",
    "ProgramVersion",
    "Replay",
]
