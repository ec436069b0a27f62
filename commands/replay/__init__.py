"""Replaying recorded predictions: exactly from the record, or against something new.

- :mod:`.selection` reads the recorded predictions and program versions back;
- :mod:`.recorded_lm` is the LM that answers from the record (no network);
- :mod:`.tools` serves recorded tool results;
- :mod:`.programs` and :mod:`.planning` build the program each prediction runs on;
- :mod:`.runner` runs them (threads or asyncio), :mod:`.judging` gives the verdicts;
- :mod:`.report` holds the report models; :mod:`.service` ties it together.
"""

from commands.replay.planning import CURRENT_CODE, RECORDED_VERSION, ReplayOptions
from commands.replay.report import FieldDiff, PredictionResult, ReplayReport, ReplayTotals
from commands.replay.selection import Selection
from commands.replay.service import run_replay

__all__ = [
    "CURRENT_CODE",
    "RECORDED_VERSION",
    "FieldDiff",
    "PredictionResult",
    "ReplayOptions",
    "ReplayReport",
    "ReplayTotals",
    "Selection",
    "run_replay",
]
