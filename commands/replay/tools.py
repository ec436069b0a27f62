"""Tools in a recorded replay: each call is answered with the result the record holds.

The recorder keeps every tool call's arguments and result (or error) in the call
tree. In a recorded replay every ``dspy.Tool`` found on the program's modules (a
``tools`` mapping or list, as ``dspy.ReAct`` has) runs a stand-in function that
returns the recorded result for the same tool name and arguments, or raises an
error of the recorded type with the recorded message. The real tool never runs.
Results are served as recorded, i.e. in their JSON form; arguments are matched
after DSPy has parsed them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from commands.payloads import to_json
from commands.replay.recorded_lm import active_record, recorded_error


def program_tools(program: Any) -> Iterator[Any]:
    """Every ``dspy.Tool`` held by the program's modules."""
    import dspy

    seen: set[int] = set()
    modules = [program, *(module for _, module in program.named_sub_modules())]
    for module in modules:
        for value in vars(module).values():
            candidates = value.values() if isinstance(value, dict) else value
            if isinstance(value, dspy.Tool):
                candidates = [value]
            elif not isinstance(value, (dict, list, tuple)):
                continue
            for tool in candidates:
                if isinstance(tool, dspy.Tool) and id(tool) not in seen:
                    seen.add(id(tool))
                    yield tool


def _stand_in(name: str) -> Callable[..., Any]:
    def recorded_tool(**kwargs: Any) -> Any:
        record = active_record()
        if record is None:
            msg = f"Tool {name} ran outside a replayed prediction; the record has no result."
            raise RuntimeError(msg)
        node = record.next_tool_result(name, to_json(kwargs)[0])
        error = node.get("error")
        if error is not None:
            type_name, _, message = str(error).partition(": ")
            raise recorded_error({"type": type_name, "message": message or type_name})
        return node.get("result")

    return recorded_tool


def serve_recorded_tools(program: Any) -> int:
    """Make every tool of the program answer from the record; return how many."""
    count = 0
    for tool in program_tools(program):
        tool.func = _stand_in(str(tool.name))
        count += 1
    return count
