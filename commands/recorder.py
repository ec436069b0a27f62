"""The DSPy recorder: a ``BaseCallback`` that turns DSPy's calls into drafts.

DSPy calls ``on_<thing>_start`` before a module, LM, tool, evaluation or compile runs
(with ``ACTIVE_CALL_ID`` still naming the *parent* call) and ``on_<thing>_end`` after.
A module call whose parent is not a module or tool of a prediction is a top-level call:
a new Prediction. Everything nested under it joins its call tree; every LM call under
it becomes one of its ``ModelExecuted`` events. DSPy binds ``ACTIVE_CALL_ID`` into its
worker threads (``dspy.Parallel``, ``Evaluate(num_threads>1)``), so parents are found
across threads too.

The recorder never breaks the user's program: any error of its own is logged, counted,
and swallowed (DSPy also guards callbacks). Only a failed *write* under
``durability="sync"`` reaches the caller, through :mod:`commands.strict`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dspy.utils.callback import BaseCallback
from dspy.utils.callback_context import ACTIVE_CALL_ID

from commands import hooks, lm_capture, scope
from commands.drafts import (
    CALL_ID,
    CHILDREN,
    DETAIL,
    ERROR,
    LATENCY_MS,
    NAME,
    STARTED,
    CallNode,
    EvaluationDraft,
    ModelCallDraft,
    OptimizationDraft,
    PredictionDraft,
    Provenance,
    entry_parts,
    new_node,
    recorded_error,
    utc_microseconds,
)
from commands.ids import new_uuid
from commands.payloads import to_json
from commands.program_state import dataset_of, inputs_digest, version_of
from commands.secrets import split_request, split_secrets
from commands.telemetry import Telemetry
from commands.tracing import current_trace_ids
from ledger.errors import GovernanceError

logger = logging.getLogger("dspy_ledger")

Sink = Callable[[object], None]


@dataclass(slots=True)
class _Active:
    """What the recorder knows about a call that has started and not yet ended."""

    node: CallNode | None
    prediction: PredictionDraft | None
    actor: str
    context: str
    evaluation: EvaluationDraft | None = None
    optimization: OptimizationDraft | None = None
    standalone: bool = False
    # Whether this prediction's calls open spans and count metrics: decided once when
    # the prediction starts, so that with telemetry off no call pays for asking again.
    traced: bool = True
    # An LM call's capture slot (lm_capture), while the call runs.
    slot: dict[str, Any] | None = None


class LedgerRecorder(BaseCallback):  # type: ignore[misc]
    """Records DSPy predictions, LM calls, evaluations and compiles as drafts.

    Finished drafts go to ``sink`` (a writer), which turns them into events.
    """

    def __init__(
        self, sink: Sink, *, default_actor: str, telemetry: Telemetry | None = None
    ) -> None:
        self._sink = sink
        self.telemetry = telemetry or Telemetry()
        self._default_actor = default_actor
        self._active: dict[str, _Active] = {}
        self._errors = 0
        self._errors_lock = threading.Lock()
        lm_capture.install()

    @property
    def recording_errors(self) -> int:
        """How many times recording failed in this recorder (the program carried on)."""
        return self._errors

    # -- helpers -------------------------------------------------------------------

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self._failed(what)

    def _failed(self, what: str) -> None:
        """Count and log the exception being handled (call only inside ``except``).

        The hooks of every prediction catch their own errors inline, with this, rather
        than through :meth:`_guard`: a closure per call costs more than the call's work.
        """
        with self._errors_lock:
            self._errors += 1
        logger.exception("dspy-ledger could not record %s; the program carries on.", what)

    def _parent(self) -> _Active | None:
        # DSPy carries ACTIVE_CALL_ID into worker threads; the hooks' own variable
        # names the parent when DSPy's wrapper (other callbacks) has replaced it.
        parent_id = ACTIVE_CALL_ID.get()
        parent = self._active.get(parent_id) if parent_id is not None else None
        if parent is None:
            own_id = hooks.current_call.get()
            parent = self._active.get(own_id) if own_id is not None else None
        return parent

    def _who(self, parent: _Active | None) -> tuple[str, str]:
        actor = scope.current_actor() or (parent.actor if parent else self._default_actor)
        if parent is not None:
            context = parent.context
        else:
            context = scope.current_context() or scope.PRODUCTION
        return actor, context

    def _provenance(self, actor: str) -> Provenance:
        trace_id, span_id = current_trace_ids()
        return Provenance(
            actor=actor,
            started_at=datetime.now(UTC),
            trace_id=trace_id,
            span_id=span_id,
            subject=scope.current_subject(),
        )

    def _submit(self, draft: object) -> None:
        self._sink(draft)

    # -- modules -------------------------------------------------------------------

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Start a prediction (top-level call) or a node of its call tree."""
        try:
            self._module_start(call_id, instance, inputs)
        except Exception:
            self._failed("a module call")

    def _module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        node = new_node(call_id, "module", type(instance).__qualname__, time.perf_counter())
        if parent is not None and parent.prediction is not None and not parent.standalone:
            if parent.node is not None:
                parent.node[CHILDREN].append(node)
            traced = parent.traced
            self._active[call_id] = _Active(
                node, parent.prediction, parent.actor, parent.context, traced=traced
            )
            if traced:
                self.telemetry.call_started(
                    call_id, ACTIVE_CALL_ID.get(), "module", type(instance).__qualname__
                )
            return
        actor, context = self._who(parent)
        kwargs = inputs.get("kwargs", inputs)
        args = inputs.get("args") or ()
        call_inputs = dict(kwargs) if isinstance(kwargs, dict) else {"kwargs": kwargs}
        if args:
            call_inputs["$args"] = list(args)
        draft = PredictionDraft(
            prediction_id=new_uuid(),
            program_name=type(instance).__qualname__,
            version=version_of(instance),
            inputs=call_inputs,
            context=context,
            provenance=self._provenance(actor),
            root=node,
        )
        traced = self.telemetry.active()
        self._active[call_id] = _Active(
            node,
            draft,
            actor,
            context,
            evaluation=parent.evaluation if parent else None,
            traced=traced,
        )
        if traced:
            self.telemetry.prediction_started(call_id, ACTIVE_CALL_ID.get(), draft, call_inputs)
        scope.note_prediction_started(draft)

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close a call tree node; a top-level call's prediction goes to the writer."""
        active = self._active.pop(call_id, None)
        if active is None or active.node is None or active.prediction is None:
            return
        node, draft = active.node, active.prediction
        latency_ms = node[LATENCY_MS] = (time.perf_counter() - node[STARTED]) * 1000
        if exception is not None:
            node[ERROR] = type(exception).__name__
        if draft.root is not node:
            if active.traced:
                self.telemetry.call_ended(call_id, exception)
            return

        try:
            draft.latency_ms = latency_ms
            draft.finished_at = datetime.now(UTC)
            draft.outputs = outputs
            draft.error = exception
            if active.evaluation is not None:
                key = inputs_digest(draft.inputs)
                active.evaluation.predictions_by_inputs.setdefault(key, []).append(
                    draft.prediction_id
                )
        except Exception:
            self._failed("a prediction")
        if active.traced:
            self.telemetry.prediction_ended(call_id, draft.program_name, exception, outputs)
        self._submit(draft)

    # -- language models -------------------------------------------------------------

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a capture slot for DSPy's history entry of this LM call."""
        try:
            self._lm_start(call_id, instance, inputs)
        except Exception:
            self._failed("an LM call")

    def _lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        model = str(getattr(instance, "model", type(instance).__name__))
        node = new_node(call_id, "lm", model, time.perf_counter())
        if parent is not None and parent.prediction is not None:
            if parent.node is not None:
                parent.node[CHILDREN].append(node)
            active = _Active(
                node, parent.prediction, parent.actor, parent.context, traced=parent.traced
            )
        else:
            # An LM called outside any module is a prediction of its own.
            actor, context = self._who(parent)
            draft = PredictionDraft(
                prediction_id=new_uuid(),
                program_name=f"lm:{model}",
                version=None,
                inputs={},
                context=context,
                provenance=self._provenance(actor),
                root=node,
            )
            active = _Active(
                node, draft, actor, context, standalone=True, traced=self.telemetry.active()
            )
        slot: dict[str, Any] = {
            "lm": instance,
            "inputs": inputs,
            "parent_call_id": parent.node[CALL_ID] if parent and parent.node else None,
            "started_us": utc_microseconds(),
            "previous": lm_capture.current_slot.get(),
        }
        active.slot = slot
        self._active[call_id] = active
        lm_capture.current_slot.set(slot)
        if active.traced:
            own = active.prediction if active.standalone else None  # the LM call is the prediction
            self.telemetry.lm_started(call_id, ACTIVE_CALL_ID.get(), instance, inputs, own)

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Turn the captured history entry into a model-call draft."""
        active = self._active.pop(call_id, None)
        if active is None or active.node is None or active.prediction is None:
            return
        node, draft = active.node, active.prediction
        slot = active.slot or {}
        lm_capture.current_slot.set(slot.get("previous"))
        latency_ms = node[LATENCY_MS] = (time.perf_counter() - node[STARTED]) * 1000
        if exception is not None:
            node[ERROR] = type(exception).__name__
        model = node[NAME]
        program = draft.program_name
        lm_trace_id = lm_span_id = None
        if active.traced:
            lm_trace_id, lm_span_id = self.telemetry.lm_ended(
                call_id,
                model,
                program,
                slot.get("entry"),
                exception,
                prediction=active.standalone,
            )
        if isinstance(exception, GovernanceError):
            # Refused before any request: governance records it as ExecutionDenied. The
            # refused node stays in the call tree (with its error); no model call happened.
            return

        try:
            lm = slot.get("lm")
            params = dict(getattr(lm, "kwargs", None) or {})
            call_inputs = dict(slot.get("inputs") or {})
            params.update(call_inputs.pop("kwargs", {}) or {})
            request, dropped, secrets = split_request(params)
            provider = model.split("/", 1)[0] if "/" in model else type(lm).__name__
            draft.model_calls.append(
                ModelCallDraft(
                    call_id=call_id,
                    parent_call_id=slot.get("parent_call_id"),
                    model=model,
                    provider=provider,
                    request=request,
                    dropped_params=dropped,
                    inputs=call_inputs,
                    entry=entry_parts(slot.get("entry")),
                    cache_hit=slot.get("cache_hit"),
                    latency_ms=latency_ms,
                    occurred_us=slot.get("started_us") or utc_microseconds(),
                    error=recorded_error(exception),
                    outputs=outputs,
                    secrets=secrets,
                    trace_id=lm_trace_id,
                    span_id=lm_span_id,
                )
            )
        except Exception:
            self._failed("an LM call")
        if active.standalone:
            draft.latency_ms = latency_ms
            draft.finished_at = datetime.now(UTC)
            draft.outputs = {"outputs": outputs}
            draft.error = exception
            self._submit(draft)

    # -- tools -----------------------------------------------------------------------

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Add a tool call (ReAct and friends) to the call tree, with its arguments."""

        def start() -> None:
            parent = self._parent()
            if parent is None or parent.prediction is None:
                return
            name = str(getattr(instance, "name", type(instance).__name__))
            node = new_node(call_id, "tool", name, time.perf_counter())
            node[DETAIL]["arguments"] = to_json(inputs.get("kwargs", inputs))[0]
            if parent.node is not None:
                parent.node[CHILDREN].append(node)
            self._active[call_id] = _Active(
                node, parent.prediction, parent.actor, parent.context, traced=parent.traced
            )
            if parent.traced:
                self.telemetry.call_started(call_id, ACTIVE_CALL_ID.get(), "tool", name)

        self._guard("a tool call", start)

    def on_tool_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close a tool call, keeping its result (replay serves it again)."""
        active = self._active.pop(call_id, None)
        if active is None or active.node is None:
            return
        node = active.node
        node[LATENCY_MS] = (time.perf_counter() - node[STARTED]) * 1000
        if active.traced:
            self.telemetry.call_ended(call_id, exception)

        def end() -> None:
            if exception is not None:
                node[ERROR] = f"{type(exception).__name__}: {exception}"
            else:
                node[DETAIL]["result"] = to_json(outputs)[0]

        self._guard("a tool call", end)

    # -- evaluations -------------------------------------------------------------------

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Start an Evaluation; predictions under it carry ``evaluation:<id>``."""
        self._guard("an evaluation", lambda: self._evaluate_start(call_id, instance, inputs))

    def _evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        actor, context = self._who(parent)
        program = inputs.get("program")
        metric = inputs.get("metric") or getattr(instance, "metric", None)
        devset = inputs.get("devset") or getattr(instance, "devset", None)
        draft = EvaluationDraft(
            evaluation_id=new_uuid(),
            version=version_of(program) if program is not None else None,
            devset=dataset_of(devset),
            metric=callable_name(metric),
            context=context,
            provenance=self._provenance(actor),
            started=time.perf_counter(),
        )
        self._active[call_id] = _Active(
            None, None, actor, f"evaluation:{draft.evaluation_id}", evaluation=draft
        )
        name = f"evaluate {type(program).__qualname__}"
        self.telemetry.run_started(
            call_id,
            ACTIVE_CALL_ID.get(),
            kind="Evaluation",
            name=name,
            stream_id=draft.evaluation_id,
            provenance=draft.provenance,
        )

    def on_evaluate_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Finish the Evaluation and send it to the writer."""
        active = self._active.pop(call_id, None)
        if active is None or active.evaluation is None:
            return
        draft = active.evaluation
        self.telemetry.call_ended(call_id, exception)
        draft.latency_ms = (time.perf_counter() - draft.started) * 1000
        draft.finished_at = datetime.now(UTC)
        draft.result = outputs
        draft.error = exception
        self._submit(draft)

    # -- optimizations -----------------------------------------------------------------

    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Start an OptimizationRun; predictions under it carry ``optimization:<id>``."""
        self._guard("a compile", lambda: self._compile_start(call_id, instance, inputs))

    def _compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        actor, context = self._who(parent)
        kwargs = inputs.get("kwargs") if isinstance(inputs.get("kwargs"), dict) else {}
        merged = {**inputs, **(kwargs or {})}
        student = merged.get("student")
        teacher = merged.get("teacher")
        draft = OptimizationDraft(
            run_id=new_uuid(),
            optimizer=type(instance).__qualname__,
            params=optimizer_params(instance),
            student=version_of(student) if student is not None else None,
            teacher=version_of(teacher) if teacher is not None else None,
            trainset=dataset_of(merged.get("trainset")),
            valset=dataset_of(merged.get("valset")),
            metric=callable_name(getattr(instance, "metric", None) or merged.get("metric")),
            context=context,
            provenance=self._provenance(actor),
            started=time.perf_counter(),
        )
        self._active[call_id] = _Active(
            None, None, actor, f"optimization:{draft.run_id}", optimization=draft
        )
        name = f"compile {draft.optimizer}"
        self.telemetry.run_started(
            call_id,
            ACTIVE_CALL_ID.get(),
            kind="OptimizationRun",
            name=name,
            stream_id=draft.run_id,
            provenance=draft.provenance,
        )

    def on_compile_end(
        self, call_id: str, outputs: Any | None, exception: Exception | None = None
    ) -> None:
        """Register the compiled program as a new version and finish the run."""
        active = self._active.pop(call_id, None)
        if active is None or active.optimization is None:
            return
        draft = active.optimization
        self.telemetry.call_ended(call_id, exception)

        def finish() -> None:
            draft.latency_ms = (time.perf_counter() - draft.started) * 1000
            draft.finished_at = datetime.now(UTC)
            draft.error = exception
            if outputs is not None and exception is None:
                result = version_of(outputs)
                if result is not None:
                    result = dataclasses.replace(
                        result,
                        parent_version_id=draft.student.version_id if draft.student else None,
                        produced_by=draft.run_id,
                    )
                draft.result = result
                score = getattr(outputs, "score", None)
                if isinstance(score, (int, float)) and not isinstance(score, bool):
                    draft.score = float(score)

        self._guard("a compile", finish)
        self._submit(draft)


def callable_name(fn: Any) -> str | None:
    """A readable name for a metric or other callable."""
    if fn is None:
        return None
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name:
        return f"{getattr(fn, '__module__', '') or ''}:{name}".lstrip(":")
    return type(fn).__qualname__


def optimizer_params(optimizer: Any) -> dict[str, Any]:
    """The optimizer's configuration as JSON: scalars kept, callables and LMs named."""
    params: dict[str, Any] = {}
    for key, value in vars(optimizer).items():
        if key.startswith("_") or key in {"trainset", "valset", "callbacks"}:
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            params[key] = value
        elif hasattr(value, "model") and hasattr(value, "kwargs"):
            params[key] = {"lm": str(value.model)}
        elif callable(value):
            params[key] = {"callable": callable_name(value)}
        elif isinstance(value, (list, tuple, dict)) and len(value) <= 50:
            params[key] = to_json(value)[0]
    kept, _ = split_secrets(params)
    return kept
