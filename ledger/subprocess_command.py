"""The command line that runs one of this package's modules in a child interpreter.

Children started with ``python -m`` get the working directory first on their path, so a
``ledger`` or ``commands`` folder of the program's own there would stand in for ours.
The command here runs the same interpreter with ``-c``, drops the working directory from
the path and puts the folder holding this package *last*, where it can shadow neither
the standard library nor the installed packages, and finds ours wherever it is installed
(site-packages, an editable install, or a checkout).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The folder that holds the ``ledger`` and ``commands`` packages.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

_CODE = (
    "import sys; root = {root!r}; "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.', root)] + [root]; "
    "from {module} import main; sys.exit(main(sys.argv[1:]))"
)


def module_command(module: str, *arguments: str) -> list[str]:
    """The command running ``module.main(arguments)`` in a fresh interpreter like this one."""
    return [sys.executable, "-c", _CODE.format(root=PACKAGE_ROOT, module=module), *arguments]
