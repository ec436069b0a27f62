"""The row every benchmark returns (the contract the bench runner imports)."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def bench_row(
    section: str,
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
) -> Row:
    """One measured figure, with its same-run baseline and the ratio to it, if any."""
    return {
        "section": section,
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": None if ratio is None else round(ratio, 2),
        "target": target,
    }
