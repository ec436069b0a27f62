"""Comparing a replayed prediction with the recorded one, field by field."""

from __future__ import annotations

from typing import Any

from commands.replay.report import FieldDiff


def output_diff(recorded: dict[str, Any], replayed: dict[str, Any]) -> list[FieldDiff]:
    """The output fields whose JSON values differ, in field order."""
    names = list(recorded) + [name for name in replayed if name not in recorded]
    return [
        FieldDiff(field=name, recorded=recorded.get(name), replayed=replayed.get(name))
        for name in names
        if recorded.get(name) != replayed.get(name) or (name in recorded) != (name in replayed)
    ]


def failure_diff(
    recorded: tuple[str | None, str | None], replayed: tuple[str | None, str | None]
) -> list[FieldDiff]:
    """How two outcomes differ when at least one of them is a failure."""
    out = []
    if recorded[0] != replayed[0]:
        out.append(FieldDiff(field="$error_type", recorded=recorded[0], replayed=replayed[0]))
    if recorded[1] != replayed[1]:
        out.append(FieldDiff(field="$error_message", recorded=recorded[1], replayed=replayed[1]))
    return out
