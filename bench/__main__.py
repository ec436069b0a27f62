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
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import postgres_refusal, postgres_url, usable_cpus
from ledger.storage import parse_url

#: The sections, in report order. Every one is optional: a missing module is skipped.
SECTIONS = (
    "bench.overhead",
    "bench.instructions",
    "bench.clock_split",
    "bench.throughput",
    "bench.postgres_pool",
    "bench.encoding",
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
    if meta["failed"]:
        lines += ["", f"These sections failed and have no rows: {', '.join(meta['failed'])}."]
    if meta["interrupted"]:
        lines += ["", "The run was interrupted: the sections after the last shown are missing."]
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


def _writable_folder(folder: Path) -> str | None:
    """Why results cannot be written to ``folder``, or None if they can (it is made)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".bench-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return f"cannot write the results to {folder}: {error.strerror or error}"
    return None


def _note_postgres() -> None:
    """Say once, before measuring, when the PostgreSQL server does not answer."""
    url = postgres_url()
    refusal = postgres_refusal(url)
    if refusal is not None:
        print(
            f"bench: PostgreSQL at {parse_url(url).masked} did not answer ({refusal}); "
            "measuring SQLite only."
        )


def _run_section(module: Any, name: str, quick: bool) -> list[dict[str, Any]] | None:
    """The section's rows, or None if it failed (its traceback printed, the run goes on)."""
    try:
        rows: list[dict[str, Any]] = module.run(quick)
    except Exception:
        traceback.print_exc()
        print(f"bench: {name} failed (traceback above); the other sections go on.", flush=True)
        return None
    return rows


def main(argv: list[str] | None = None, sections: tuple[str, ...] = SECTIONS) -> int:
    """Run every present section and write the results; return the exit status.

    The output folder is checked before anything is measured. A section that fails is
    reported and the others still run; the results of those that ran are written, and
    the exit status is 1. Ctrl-C writes what was measured so far (exit status 130).
    """
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
    unwritable = _writable_folder(args.out)
    if unwritable is not None:
        print(f"bench: {unwritable}; nothing was measured.", file=sys.stderr)
        return 2
    _note_postgres()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    interrupted = False
    try:
        for name in sections:
            if args.only and name.rpartition(".")[2] not in args.only:
                continue
            module = _load(name)
            if module is None:
                continue
            print(f"bench: running {name} ...", flush=True)
            section_rows = _run_section(module, name, args.quick)
            if section_rows is None:
                failed.append(name)
            else:
                rows.extend(section_rows)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; writing what was measured so far.", file=sys.stderr)
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {usable_cpus()} CPU(s)",
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
        "failed": failed,
        "interrupted": interrupted,
    }
    (args.out / "bench-results.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    markdown = _markdown(rows, meta)
    (args.out / "bench-results.md").write_text(markdown)
    print(markdown)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
