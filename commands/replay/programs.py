"""Building the program a replay runs: the user's factory, loaded with a recorded state."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commands.replay.selection import RecordedVersion
from ledger.errors import InvalidInputError


class ProgramLoadError(InvalidInputError):
    """The program to replay cannot be imported, built, or given the recorded state."""


def import_object(path: str, what: str) -> Any:
    """Import ``package.module:attr`` (the current folder is importable, as for scripts)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        msg = f"{what} {path!r} must look like package.module:name."
        raise ProgramLoadError(msg)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        msg = f"{what} {path!r} does not import ({reason}); check the module path and name."
        raise ProgramLoadError(msg) from None
    return target


def program_factory(path: str) -> Callable[[], Any]:
    """The callable at ``path`` that returns a fresh program (a class counts)."""
    factory = import_object(path, "The program")
    if not callable(factory):
        msg = f"The program {path!r} is not callable; point it at a function returning a module."
        raise ProgramLoadError(msg)
    return factory  # type: ignore[no-any-return]


def build_program(factory: Callable[[], Any], path: str) -> Any:
    """Call the factory and check that it returned a DSPy module."""
    import dspy

    try:
        program = factory()
    except Exception as error:
        msg = (
            f"The program factory {path!r} raised {type(error).__name__}: {error}; point "
            "--program at a function that builds the program with no arguments."
        )
        raise ProgramLoadError(msg) from None
    if not isinstance(program, dspy.Module):
        msg = (
            f"The program factory {path!r} returned a {type(program).__name__}, not a DSPy "
            "module; it must return a fresh dspy.Module."
        )
        raise ProgramLoadError(msg)
    return program


_FIELD_PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")


def check_state_fits(program: Any, version: RecordedVersion) -> None:
    """Refuse a recorded state that the current code cannot take (renamed fields...).

    DSPy's ``load_state`` pairs signature fields by position and silently accepts a
    state whose fields were renamed, so the shape is compared here first.
    """
    current = program.dump_state()
    recorded = version.state
    short = str(version.version_id)[:8]
    if set(current) != set(recorded):
        msg = (
            f"Version {short} was recorded with predictors {sorted(recorded)} but the "
            f"current program has {sorted(current)}; its state no longer loads."
        )
        raise ProgramLoadError(msg)
    for name, predictor in program.named_predictors():
        fields = list(predictor.signature.fields)
        # A program that is itself a predictor (a bare dspy.Predict) is named "self",
        # and its state is the predictor's own, not keyed by a name.
        own = recorded if name == "self" else recorded.get(name)
        saved = (own or {}).get("signature", {}).get("fields") or []
        if len(saved) != len(fields):
            msg = (
                f"Version {short}: predictor {name!r} was recorded with {len(saved)} fields "
                f"but now has {len(fields)}; its state no longer loads."
            )
            raise ProgramLoadError(msg)
        for saved_field in saved:
            match = _FIELD_PLACEHOLDER.match(str(saved_field.get("description", "")))
            if match and match.group(1) not in fields:
                msg = (
                    f"Version {short}: predictor {name!r} has no field {match.group(1)!r} "
                    f"any more (now: {', '.join(fields)}); its state no longer loads."
                )
                raise ProgramLoadError(msg)


def load_recorded_state(program: Any, version: RecordedVersion) -> Any:
    """Load a recorded version's state into a fresh program, or say why it cannot."""
    check_state_fits(program, version)
    try:
        program.load_state(version.state)
    except Exception as error:
        short = str(version.version_id)[:8]
        msg = f"Version {short}'s state no longer loads ({type(error).__name__}: {error})."
        raise ProgramLoadError(msg) from None
    return program


def default_program_path(version: RecordedVersion) -> str:
    """The recorded ``module:Class`` (used when no --program is given)."""
    return version.module_path
