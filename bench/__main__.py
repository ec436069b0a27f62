"""Run the benchmark suite: ``python -m bench [--quick] [--out DIR]``.

Writes ``bench-results.md`` (a table) and ``bench-results.json`` (the rows) to ``DIR``
(default: ``bench/results``). Each section is a module exposing
``run(quick: bool) -> list[Row]``; optional sections that are not present are skipped
with a note.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import usable_cpus

#: The sections, in report order. Every one is optional: a missing module is skipped.
SECTIONS = (
    "bench.overhead",
    "bench.instructions",
    "bench.clock_split",
    "bench.throughput",
    "bench.views",
    "bench.integrity",
    "bench.replay",
    "bench.replay_instructions",
    "bench.otel",
    "bench.storage",
)


def _load(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        print(f"bench: {name} is not present; skipped.")
        return None


def _format(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# dspy-ledger benchmark results",
        "",
        f"{meta['when']}, Python {meta['python']}, {meta['machine']}, "
        f"{'quick' if meta['quick'] else 'full'} run, {meta['seconds']:.0f} s.",
        "Medians of several rounds; each ratio is against its baseline measured in the same run.",
    ]
    section = None
    for item in rows:
        if item["section"] != section:
            section = item["section"]
            lines += ["", f"## {section}", ""]
            lines += ["| figure | value | unit | baseline | ratio | target |"]
            lines += ["|---|---:|---|---:|---:|---|"]
        ratio = f"{item['ratio']:.2f}x" if item["ratio"] is not None else ""
        lines.append(
            f"| {item['name']} | {_format(item['value'])} | {item['unit']} | "
            f"{_format(item['baseline'])} | {ratio} | {item['target'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every present section and write the results; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of seconds (for CI)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for the results"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[name.rpartition(".")[2] for name in SECTIONS],
        help="run only this section (repeat for several)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in SECTIONS:
        if args.only and name.rpartition(".")[2] not in args.only:
            continue
        module = _load(name)
        if module is None:
            continue
        print(f"bench: running {name} ...", flush=True)
        rows.extend(module.run(args.quick))
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {usable_cpus()} CPU(s)",
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-results.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    markdown = _markdown(rows, meta)
    (args.out / "bench-results.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
