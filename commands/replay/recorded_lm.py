"""The LM of a recorded replay: it answers each request from the recorded outputs.

Every recorded ``ModelExecuted`` is filed under its messages (role and text of each,
in order). A request is answered by the oldest unused recorded call with the same
messages, so identical prompts are served in the order they were recorded, and
different prompts match by content whatever order they come in. A request with no
recorded answer is a *divergence*: it is noted and raised as
:class:`ReplayDivergenceError`; nothing ever goes to the network. A recorded call
that failed fails again, with the recorded error type and message.

Sampling parameters (temperature, max_tokens, ...) are not part of the key: the
record answers a prompt, and a recorded replay runs exactly one program version.
"""

from __future__ import annotations

import difflib
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dspy.clients.base_lm import BaseLM
from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
from dspy.lm15 import Message, Response, TextPart, ThinkingPart, Usage
from dspy.utils.callback import with_callbacks

from ledger.hashing import canonical_json, digest

#: The model name the replay's LM calls are recorded under (it has no price: free).
RECORDED_MODEL = "ledger-replay/recorded"


class ReplayDivergenceError(Exception):
    """The program asked for something the record holds no answer to."""


@dataclass
class _Served:
    """One candidate output of a recorded LM call, or the error it raised."""

    call: dict[str, Any]
    output: Any


@dataclass
class RecordedCalls:
    """One prediction's recorded LM answers and tool results, consumed as served."""

    answers: dict[tuple[tuple[str, str], ...], deque[_Served]]
    tool_results: dict[str, deque[dict[str, Any]]]
    recorded_messages: list[Any]
    divergences: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, messages: list[dict[str, Any]]) -> _Served:
        """The recorded answer to these messages, or a noted divergence."""
        with self.lock:
            index = self.requests
            self.requests += 1
            queue = self.answers.get(messages_key(messages))
            if queue:
                return queue.popleft()
            divergence = {
                "kind": "lm",
                "request_index": index,
                "message": f"LM request {index + 1} has no recorded answer (its prompt differs).",
                "request_diff": prompt_diff(self._nearest(index), messages),
            }
            self.divergences.append(divergence)
        raise ReplayDivergenceError(divergence["message"])

    def take_answer(self, messages: list[dict[str, Any]]) -> _Served | None:
        """The recorded answer to these messages if the recorded call succeeded, taken.

        None (nothing taken) when there is no answer or the recorded call failed: DSPy's
        own route then serves it through :meth:`next_answer`, raising as DSPy raises.
        """
        with self.lock:
            queue = self.answers.get(messages_key(messages))
            if not queue or queue[0].call.get("error") is not None:
                return None
            self.requests += 1
            return queue.popleft()

    def next_tool_result(self, name: str, arguments: Any) -> dict[str, Any]:
        """The recorded result of this tool call, or a noted divergence."""
        with self.lock:
            queue = self.tool_results.get(tool_key(name, arguments))
            if queue:
                return queue.popleft()
            message = f"Tool {name} was called with arguments the record does not hold."
            self.divergences.append(
                {"kind": "tool", "tool": name, "arguments": arguments, "message": message}
            )
        raise ReplayDivergenceError(message)

    def _nearest(self, index: int) -> Any:
        if not self.recorded_messages:
            return []
        return self.recorded_messages[min(index, len(self.recorded_messages) - 1)]


#: The DSPy setting that holds the recorded calls of the prediction being replayed.
#: A DSPy setting (not a ContextVar of our own) because DSPy carries its settings into
#: the worker threads of ``dspy.Parallel`` and friends inside the program.
RECORD_SETTING = "dspy_ledger_replay_record"


def active_record() -> RecordedCalls | None:
    """The recorded calls of the prediction being replayed here, if any."""
    import dspy

    record = dspy.settings.get(RECORD_SETTING)
    return record if isinstance(record, RecordedCalls) else None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append(canonical_json(part) if isinstance(part, dict) else str(part))
        return "".join(parts)
    return "" if content is None else str(content)


def normalized(messages: Any) -> list[tuple[str, str]]:
    """Messages as (role, text) pairs, leading system messages folded into one."""
    out: list[tuple[str, str]] = []
    for message in messages or []:
        if not isinstance(message, dict):
            out.append(("user", str(message)))
            continue
        role, text = str(message.get("role", "user")), _text(message.get("content"))
        if role == "system" and out and out[-1][0] == "system" and len(out) == 1:
            out[-1] = ("system", out[-1][1] + "\n" + text)
        else:
            out.append((role, text))
    return out


def messages_key(messages: Any) -> tuple[tuple[str, str], ...]:
    """What a request's messages are matched by: their (role, text) pairs.

    The pairs themselves, not a digest of them: a dictionary compares them exactly, and
    hashing strings costs less than serializing the messages for a digest.
    """
    return tuple(normalized(messages))


def tool_key(name: str, arguments: Any) -> str:
    """The digest a tool call is matched by (its name and JSON arguments)."""
    return digest({"tool": name, "arguments": arguments})


def prompt_diff(recorded: Any, replayed: Any) -> str:
    """A unified diff of a recorded prompt and the replayed one (what changed)."""

    def lines(messages: Any) -> list[str]:
        out: list[str] = []
        for role, text in normalized(messages):
            out.append(f"--- {role} ---")
            out.extend(text.splitlines())
        return out

    diff = difflib.unified_diff(
        lines(recorded), lines(replayed), "recorded", "replayed", lineterm="", n=1
    )
    return "\n".join(list(diff)[:200])


def recorded_calls(model_calls: list[dict[str, Any]], call_tree: dict[str, Any]) -> RecordedCalls:
    """Index one prediction's recorded LM calls and tool results for serving."""
    answers: dict[tuple[tuple[str, str], ...], deque[_Served]] = {}
    recorded_messages = []
    for call in model_calls:
        recorded_messages.append(call.get("messages") or [])
        queue = answers.setdefault(messages_key(call.get("messages")), deque())
        outputs = call.get("outputs") if call.get("error") is None else None
        candidates = outputs if isinstance(outputs, list) and outputs else [None]
        for output in candidates:
            queue.append(_Served(call=call, output=output))
    tool_results: dict[str, deque[dict[str, Any]]] = {}
    for node in _tool_nodes(call_tree):
        key = tool_key(str(node.get("name")), node.get("arguments"))
        tool_results.setdefault(key, deque()).append(node)
    return RecordedCalls(answers, tool_results, recorded_messages)


def _tool_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if node.get("kind") == "tool":
        yield node
    for child in node.get("children") or []:
        if isinstance(child, dict):
            yield from _tool_nodes(child)


def recorded_error(error: dict[str, Any]) -> Exception:
    """An exception of the recorded type's name carrying the recorded message."""
    name = str(error.get("type") or "RecordedError").rpartition(".")[2] or "RecordedError"
    error_class: type[Exception] = type(name, (Exception,), {"__module__": "recorded"})
    return error_class(str(error.get("message") or name))


def _model_of(call: dict[str, Any]) -> str:
    return str(call.get("response_model") or call.get("model") or RECORDED_MODEL)


def served_output(served: _Served) -> Any:
    """One output as DSPy hands it to an adapter: the text, or a dict with the reasoning.

    The same as DSPy makes of :func:`_response`'s answer (``CallResult.native``).
    """
    output = served.output
    if not isinstance(output, dict):
        return "" if output is None else str(output)
    text = str(output.get("text") or "")
    reasoning = str(output.get("reasoning_content") or "")
    return {"text": text, "reasoning_content": reasoning} if reasoning else text


def _response(served: _Served) -> Response:
    call, output = served.call, served.output
    if call.get("error") is not None:
        raise recorded_error(call["error"])
    parts: list[Any] = []
    if isinstance(output, dict):
        if output.get("reasoning_content"):
            parts.append(ThinkingPart(str(output["reasoning_content"])))
        parts.append(TextPart(str(output.get("text") or "")))
    else:
        parts.append(TextPart("" if output is None else str(output)))
    return Response(
        id=None,
        model=_model_of(call),
        message=Message.assistant(parts),
        finish_reason="stop",
        # The record answered: no tokens were spent, so the cost views count none.
        usage=Usage(input_tokens=0, output_tokens=0),
    )


class RecordedEngine(DummyEngine):  # type: ignore[misc]
    """A DSPy engine serving recorded answers, on the same route as ``DummyLM``'s.

    DSPy hands a ``DummyEngine`` an adapter's messages as they are, with no canonical
    request built from them, so serving from the record costs less than ``DummyLM``'s
    scripted answers do. The messages are matched as DSPy recorded them: as written for
    such calls, and in a canonical request's display form when the caller passed a
    ``dspy.lm15.Request``.
    """

    def complete(self, request: Any) -> Response:
        """Answer a canonical request (the caller passed a ``Request``)."""
        from dspy.clients.lm15_boundary import history_messages

        return self._complete_messages(list(history_messages(request)))

    def _complete_messages(self, messages: list[dict[str, Any]]) -> Response:
        record = active_record()
        if record is None:
            msg = "The replay LM was called outside a replayed prediction; it has no record."
            raise ReplayDivergenceError(msg)
        return _response(record.next_answer(messages))


class RecordedAnswersLM(BaseLM):  # type: ignore[misc]
    """A ``dspy.BaseLM`` that answers from the record and never reaches a network.

    It serves whichever prediction is being replayed in the current thread or task
    (:func:`active_record`), so one instance serves a whole threaded replay.
    """

    def __init__(self) -> None:
        super().__init__(
            model=RECORDED_MODEL,
            model_type="chat",
            temperature=None,
            max_tokens=None,
            cache=False,
            num_retries=0,
        )
        engine = RecordedEngine(self)
        self._engine_spec = engine
        self._async_engine_spec = AsyncDummyEngine(engine)
        # Every request must be answered by the record, never by DSPy's cache.
        self._cache_responses = False

    # An adapter's call whose record holds a successful answer is answered here, inside
    # DSPy's callbacks (so the call is recorded as any LM call is) but without DSPy's
    # request preparation and execution, which cost more than the rest of the answer.
    # The history entry is the one DSPy's finalization writes. Anything else (a prompt or
    # a Request, streaming, n > 1, logprobs, a recorded failure, a divergence) takes
    # DSPy's own route through the engine.

    @with_callbacks  # type: ignore[untyped-decorator]
    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """Answer from the record (see :class:`RecordedEngine` for the full route)."""
        served = _direct_answer(prompt, messages, kwargs)
        if served is None:
            return _DSPY_CALL(self, prompt, messages=messages, **kwargs)
        return self._answered(served, messages, kwargs)

    @with_callbacks  # type: ignore[untyped-decorator]
    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """The async counterpart of :meth:`__call__` (the record needs no I/O)."""
        served = _direct_answer(prompt, messages, kwargs)
        if served is None:
            return await _DSPY_ACALL(self, prompt, messages=messages, **kwargs)
        return self._answered(served, messages, kwargs)

    def _answered(self, served: _Served, messages: Any, kwargs: dict[str, Any]) -> list[Any]:
        import datetime
        import uuid

        from dspy.dsp.utils.settings import settings

        outputs = [served_output(served)]
        usage = dict(NO_USAGE)
        if settings.usage_tracker:
            settings.usage_tracker.add_usage(self.model, usage)
        if not settings.disable_history:
            self.update_history(
                {
                    "prompt": None,
                    "messages": messages,
                    "kwargs": {k: v for k, v in kwargs.items() if not k.startswith("api_")},
                    "response": None,
                    "outputs": outputs,
                    "usage": usage,
                    "cost": None,
                    "timestamp": datetime.datetime.now().isoformat(),
                    "uuid": str(uuid.uuid4()),
                    "model": self.model,
                    "response_model": _model_of(served.call),
                    "model_type": self.model_type,
                }
            )
        return outputs


#: The usage DSPy reports for an answer that spent no tokens (``usage_dict`` of it).
NO_USAGE: dict[str, Any] = {
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "prompt_tokens_details": None,
    "completion_tokens_details": None,
}

#: ``BaseLM.__call__`` and ``acall`` without their callback wrappers: the replay LM's own
#: methods are wrapped already, and the call must be recorded once.
_DSPY_CALL = BaseLM.__call__.__wrapped__
_DSPY_ACALL = BaseLM.acall.__wrapped__


def _direct_answer(prompt: Any, messages: Any, kwargs: dict[str, Any]) -> _Served | None:
    """The recorded answer to an adapter's plain call, taken; None: DSPy's route serves it."""
    from dspy.dsp.utils.settings import settings

    if prompt is not None or type(messages) is not list or settings.send_stream is not None:
        return None
    if kwargs.get("n", 1) != 1 or kwargs.get("logprobs") or "request" in kwargs:
        return None
    record = active_record()
    return None if record is None else record.take_answer(messages)
