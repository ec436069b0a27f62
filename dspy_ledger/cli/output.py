"""Where the commands' tables and text go: standard output, never cut short.

Rich fits a table to the console's width and cuts what does not fit with "…". Read off a
terminal that width is a guess (80 columns), so a report piped to a file or another
program lost the ends of its model names and dollar figures. Here, off a terminal the
width is unbounded (a table takes its natural width), and on a terminal a cell that does
not fit folds onto more lines rather than being cut: a figure is shown whole or not at all.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

#: The width used off a terminal: wide enough that no table is fitted to it.
UNBOUNDED_WIDTH = 100_000


def stdout_console(*, soft_wrap: bool = False) -> Console:
    """A console for a command's output on standard output."""
    console = Console(soft_wrap=soft_wrap)
    if not console.is_terminal:
        console = Console(soft_wrap=soft_wrap, width=UNBOUNDED_WIDTH)
    return console


def folding_table(*headers: str) -> Table:
    """A table with these column headers whose cells fold rather than being cut."""
    result = Table()
    for header in headers:
        result.add_column(header, overflow="fold")
    return result
