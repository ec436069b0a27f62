"""What a replay will do: its options, and the program each prediction runs on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from uuid import UUID

from commands.replay.programs import (
    ProgramLoadError,
    build_program,
    import_object,
    load_recorded_state,
    program_factory,
)
from commands.replay.selection import RecordedPrediction, RecordedVersion, Selection, load_version
from commands.replay.tools import serve_recorded_tools
from ledger.application import LedgerApplication
from ledger.errors import InvalidInputError

Mode = Literal["recorded", "live"]

#: ``program_version`` values that are not version ids.
RECORDED_VERSION = "recorded"
CURRENT_CODE = "current"


@dataclass
class ReplayOptions:
    """Everything a replay is asked to do (the CLI's options, as Python values).

    ``program``: ``module:attr`` of a factory returning a fresh DSPy module (default:
    the recorded module path, instantiated with no arguments). ``mode``: ``recorded``
    serves every LM call and tool result from the record; ``live`` calls ``lm`` (a
    model name or a ``dspy.BaseLM``; default: whatever LM the program is set up
    with). ``program_version``: ``recorded`` (each prediction's own version),
    ``current`` (the factory's program as your code builds it today) or a version id.
    ``metric``: ``module:attr`` or a callable ``metric(example, prediction)``.
    """

    program: str | None = None
    selection: Selection = field(default_factory=Selection)
    mode: Mode = "recorded"
    lm: Any = None
    program_version: str = RECORDED_VERSION
    metric: str | Callable[..., Any] | None = None
    threads: int = 1
    asynchronous: bool | None = None

    def check(self) -> None:
        """Refuse contradictory or malformed options with one clear sentence."""
        if self.mode not in ("recorded", "live"):
            msg = f"The replay mode must be 'recorded' or 'live', not {self.mode!r}."
            raise InvalidInputError(msg)
        if self.mode == "recorded" and self.lm is not None:
            msg = "A recorded replay answers from the record; drop the LM or replay live."
            raise InvalidInputError(msg)
        if not 1 <= self.threads <= 256:
            msg = f"threads must be between 1 and 256, not {self.threads}."
            raise InvalidInputError(msg)
        chosen = self.selection
        if chosen.since and chosen.until and chosen.since > chosen.until:
            msg = f"--since ({chosen.since.isoformat()}) is after --until; nothing to replay."
            raise InvalidInputError(msg)
        if chosen.version is not None:
            try:
                version = str(UUID(chosen.version.strip()))
            except ValueError:
                msg = f"--version {chosen.version!r} is not a program version id (a UUID)."
                raise InvalidInputError(msg) from None
            self.selection = replace(chosen, version=version)

    def lm_name(self) -> str | None:
        """The live LM's model name, for the record."""
        if self.lm is None:
            return None
        return str(self.lm) if isinstance(self.lm, str) else str(getattr(self.lm, "model", self.lm))


def metric_callable(metric: str | Callable[..., Any] | None) -> tuple[Any, str | None]:
    """The metric function and its name (a ``module:attr`` path is imported)."""
    if metric is None:
        return None, None
    if isinstance(metric, str):
        function = import_object(metric, "The metric")
        if not callable(function):
            msg = f"The metric {metric!r} is not callable."
            raise ProgramLoadError(msg)
        return function, metric
    name = getattr(metric, "__qualname__", type(metric).__qualname__)
    return metric, f"{getattr(metric, '__module__', '')}:{name}".lstrip(":")


def live_lm(lm: Any) -> Any:
    """A ``dspy.BaseLM`` for a live replay (a model name becomes ``dspy.LM(name)``)."""
    import dspy

    if lm is None or isinstance(lm, dspy.BaseLM):
        return lm
    if isinstance(lm, str):
        return dspy.LM(lm, cache=False)
    msg = f"lm must be a model name or a dspy.BaseLM, not {type(lm).__name__}."
    raise InvalidInputError(msg)


class ProgramBuilder:
    """Builds (once per program version) the program each prediction is replayed on."""

    def __init__(self, app: LedgerApplication, options: ReplayOptions) -> None:
        self.app = app
        self.options = options
        # By module path and version id (or CURRENT_CODE).
        self._programs: dict[tuple[str, UUID | str], Any] = {}
        self._errors: dict[tuple[str, UUID | str], str] = {}
        self._versions: dict[str, RecordedVersion | None] = {}
        self.target: RecordedVersion | None = None
        if options.program_version not in (RECORDED_VERSION, CURRENT_CODE):
            self.target = self._target_version(options.program_version)
        #: The program built to check that ``options.program`` imports, used once.
        self._checked: Any = None
        if options.program is not None:
            # An explicit program that does not import stops the whole replay.
            self._checked = build_program(program_factory(options.program), options.program)

    def _target_version(self, value: str) -> RecordedVersion:
        try:
            version_id = UUID(value.strip())
        except ValueError:
            msg = f"--program-version must be recorded, current or a version id, not {value!r}."
            raise InvalidInputError(msg) from None
        version = load_version(self.app, version_id)
        if version is None:
            msg = f"No program version with id {value} exists in this ledger."
            raise InvalidInputError(msg)
        return version

    def version(self, version_id: str | None) -> RecordedVersion | None:
        """A recorded version (by its id's text), read once."""
        if version_id is None:
            return None
        if version_id not in self._versions:
            self._versions[version_id] = load_version(self.app, UUID(version_id))
        return self._versions[version_id]

    def program_for(self, prediction: RecordedPrediction) -> Any:
        """The prepared program for this prediction (ProgramLoadError if none)."""
        recorded = self.version(prediction.program_version_id)
        state = self.target if self.target is not None else recorded
        if self.options.program_version == CURRENT_CODE:
            state = None
        path = self.options.program or (recorded.module_path if recorded else None)
        if path is None:
            msg = "The prediction has no recorded program version; pass --program module:factory."
            raise ProgramLoadError(msg)
        key = (path, state.version_id if state else CURRENT_CODE)
        if key in self._errors:
            raise ProgramLoadError(self._errors[key])
        if key not in self._programs:
            try:
                self._programs[key] = self._build(path, state)
            except ProgramLoadError as error:
                self._errors[key] = str(error)
                raise
        return self._programs[key]

    def _build(self, path: str, state: RecordedVersion | None) -> Any:
        fresh, self._checked = self._checked, None
        if fresh is None or path != self.options.program:
            fresh = build_program(program_factory(path), path)
        # A copy: a factory that hands out a shared instance keeps its own LMs and tools.
        program = fresh.deepcopy()
        if state is not None:
            load_recorded_state(program, state)
        if self.options.mode == "recorded" or self.options.lm is not None:
            # The replay's LM must answer every call, not an LM saved on a predictor.
            for _, predictor in program.named_predictors():
                predictor.lm = None
        if self.options.mode == "recorded":
            serve_recorded_tools(program)
        return program
