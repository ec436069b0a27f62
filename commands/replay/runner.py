"""Running recorded inputs through a program: in threads, or as asyncio tasks.

Each prediction runs in a context of its own (``contextvars``), holding its recorded
answers (a DSPy setting, see :func:`~commands.replay.recorded_lm.active_record`). The
recorder notes the root call id of the prediction the call starts
(:func:`commands.scope.watching_predictions`), which is how the replay's own recorded
prediction is found afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from commands import scope
from commands.drafts import CALL_ID
from commands.payloads import as_mapping, to_json
from commands.replay.recorded_lm import RECORD_SETTING, RecordedCalls
from commands.replay.selection import MadePrediction, made_prediction


def as_json(value: Any, path: str) -> Any:
    """A value converted to JSON as the ledger converts what it stores, with only the
    redactors that are always on (a replay is given its ledger's own conversion)."""
    return to_json(value)[0]


@dataclass
class Job:
    """One prediction to run: the program, its inputs, (recorded mode) its record, the
    data subject it concerns (recorded under that subject again), and how its outputs
    are converted to be compared with the record (as the ledger stored those)."""

    index: int
    program: Any
    inputs: dict[str, Any]
    record: RecordedCalls | None
    subject: str | None = None
    convert: Callable[[Any, str], Any] = as_json


@dataclass
class Outcome:
    """What one run gave: outputs or the error, the DSPy call id of the run, and the
    prediction it recorded as its events will say (once the writer has committed it)."""

    index: int
    outputs: dict[str, Any] | None = None
    prediction: Any = None
    error: BaseException | None = None
    call_id: str | None = None
    divergences: list[dict[str, Any]] = field(default_factory=list)
    made: MadePrediction | None = None


def call_arguments(inputs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The recorded inputs as call arguments (positional ones were kept under ``$args``)."""
    kwargs = dict(inputs)
    args = kwargs.pop("$args", [])
    return list(args) if isinstance(args, list) else [args], kwargs


def _finish(job: Job, started: list[Any], prediction: Any, error: BaseException | None) -> Outcome:
    outcome = Outcome(index=job.index, error=error)
    if started:  # the draft of the prediction the run recorded (its calls have ended)
        outcome.made = made_prediction(started[0])
        outcome.call_id = started[0].root[CALL_ID]
    if error is None:
        outcome.prediction = prediction
        outcome.outputs = as_mapping(job.convert(prediction, "$.outputs"))
    if job.record is not None:
        outcome.divergences = list(job.record.divergences)
    return outcome


def _settings(job: Job) -> AbstractContextManager[Any]:
    """The job's record as a DSPy setting, and its data subject as the recorder's."""
    import dspy

    record = (
        contextlib.nullcontext()
        if job.record is None
        else dspy.context(**{RECORD_SETTING: job.record})
    )
    if not job.subject:
        return record
    return _concerning(job.subject, record)


@contextlib.contextmanager
def _concerning(subject: str, record: AbstractContextManager[Any]) -> Iterator[None]:
    with record, scope.acting_for(subject):
        yield


def run_sync(job: Job) -> Outcome:
    """Run one job in the calling thread (in the context it was given)."""
    args, kwargs = call_arguments(job.inputs)
    with scope.watching_predictions() as started:
        try:
            with _settings(job):
                prediction = job.program(*args, **kwargs)
        except Exception as error:
            return _finish(job, started, None, error)
    return _finish(job, started, prediction, None)


async def run_async(job: Job) -> Outcome:
    """Run one job with the program's ``acall`` (in the task's own context)."""
    args, kwargs = call_arguments(job.inputs)
    with scope.watching_predictions() as started:
        try:
            with _settings(job):
                prediction = await job.program.acall(*args, **kwargs)
        except Exception as error:
            return _finish(job, started, None, error)
    return _finish(job, started, prediction, None)


def is_async_program(program: Any) -> bool:
    """True if the program's own class implements ``aforward`` but not ``forward``."""
    for cls in type(program).__mro__:
        if cls.__module__.startswith("dspy."):
            return False
        if "aforward" in vars(cls) and inspect.iscoroutinefunction(vars(cls)["aforward"]):
            return "forward" not in vars(cls)
        if "forward" in vars(cls):
            return False
    return False


def run_jobs(
    jobs: list[Job],
    *,
    threads: int,
    asynchronous: bool,
    done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run every job, ``threads`` at a time, calling ``done`` as each one finishes."""
    if asynchronous:
        return _run_loop(jobs, threads, done)
    if threads <= 1:
        outcomes = []
        for job in jobs:
            outcome = contextvars.copy_context().run(run_sync, job)
            done(outcome)
            outcomes.append(outcome)
        return outcomes
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dspy-ledger-replay") as pool:
        # Each job runs in a copy of this context: DSPy's settings, the actor, the
        # replay context label, and a record slot of its own.
        futures = [pool.submit(contextvars.copy_context().run, run_sync, job) for job in jobs]
        outcomes = []
        for future in futures:
            outcome = future.result()
            done(outcome)
            outcomes.append(outcome)
    return outcomes


def _run_loop(jobs: list[Job], threads: int, done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run the jobs as asyncio tasks on a loop of their own.

    Called from inside a running loop (a notebook, an async app), the replay's loop runs
    in a worker thread, in a copy of the caller's context.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_run_tasks(jobs, threads, done))
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dspy-ledger-replay") as pool:
        future = pool.submit(context.run, asyncio.run, _run_tasks(jobs, threads, done))
        return future.result()


async def _run_tasks(
    jobs: list[Job], threads: int, done: Callable[[Outcome], None]
) -> list[Outcome]:
    limit = asyncio.Semaphore(max(1, threads))

    async def bounded(job: Job) -> Outcome:
        async with limit:
            outcome = await run_async(job)
        done(outcome)
        return outcome

    return list(await asyncio.gather(*(asyncio.create_task(bounded(job)) for job in jobs)))
