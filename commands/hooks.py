"""Direct hooks: calling the recorder from DSPy's own entry points, not its callbacks.

DSPy's callback machinery is generic: for every module, LM, adapter and tool call it
binds the arguments with ``inspect.getcallargs`` and picks a handler by ``isinstance``
chains, for every registered callback. Measured with a profiler, that machinery alone
costs more than the recorder's own work (docs/performance.md). So the recorder is not
registered as a DSPy callback: the methods DSPy decorates with ``with_callbacks``
(``Module.__call__`` / ``acall``, ``BaseLM.__call__`` / ``acall``, ``Tool.__call__`` /
``acall``, ``Evaluate.__call__``, every optimizer's ``compile``, ``Retrieve.__call__``)
are wrapped once per process, and the wrappers call the attached recorders' ``on_*``
methods with the same arguments DSPy would pass.

While a hooked call runs, its call id is set in DSPy's ``ACTIVE_CALL_ID`` (so
``dspy.Parallel`` and ``Evaluate(num_threads>1)``, which carry that variable into their
worker threads, still name the parent) and in :data:`current_call` (which DSPy's own
wrapper cannot overwrite when other callbacks are registered too). With no recorder
attached, a wrapper costs one tuple check.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dspy.utils.callback_context import ACTIVE_CALL_ID

from commands.ids import new_call_id

#: The call id of the innermost hooked call running in this context.
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dspy_ledger_call", default=None
)
_compiling: contextvars.ContextVar[tuple[tuple[int, int], ...]] = contextvars.ContextVar(
    "dspy_ledger_compiling", default=()
)

_recorders: tuple[Any, ...] = ()
_lock = threading.Lock()
_installed = False
_METHODS = ("__call__", "acall", "compile")
_MARK = "__dspy_ledger_hook__"


def attach(recorder: Any) -> None:
    """Start calling ``recorder`` from every hooked DSPy call (installs the hooks)."""
    global _recorders  # noqa: PLW0603 - the process-wide set of recorders
    install()
    with _lock:
        if not any(r is recorder for r in _recorders):
            _recorders = (*_recorders, recorder)


def detach(recorder: Any) -> None:
    """Stop calling ``recorder``; calls already running still end on it."""
    global _recorders  # noqa: PLW0603 - the process-wide set of recorders
    with _lock:
        _recorders = tuple(r for r in _recorders if r is not recorder)


def attached(recorder: Any) -> bool:
    """True if ``recorder`` is called from the hooks."""
    return any(r is recorder for r in _recorders)


def _binder(fn: Callable[..., Any]) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    """Bind a call's arguments into the ``inputs`` dict DSPy's callbacks receive."""
    target = inspect.unwrap(fn)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return lambda instance, args, kwargs: {"args": args, "kwargs": kwargs}
    params = list(signature.parameters.values())[1:]
    kinds = [p.kind for p in params]
    if kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        names = (params[0].name, params[1].name)
        return lambda instance, args, kwargs: {names[0]: args, names[1]: kwargs}

    def bind(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            bound = signature.bind(instance, *args, **kwargs)
        except TypeError:
            return {"args": args, "kwargs": kwargs}
        bound.apply_defaults()
        inputs = dict(bound.arguments)
        inputs.pop(next(iter(signature.parameters)), None)
        return inputs

    return _fast_binder(params) or bind


def _fast_binder(
    params: list[inspect.Parameter],
) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] | None:
    """A binder for ``(self, a=..., *, b=..., **rest)``, the shape of ``BaseLM.__call__``.

    ``inspect.Signature.bind`` costs more than everything else a hook does; this shape
    (every named parameter has a default, extra keywords are collected) binds by hand.
    """
    kinds = [p.kind for p in params]
    if not params or kinds[-1] != inspect.Parameter.VAR_KEYWORD:
        return None
    named = params[:-1]
    allowed = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind not in allowed or p.default is inspect.Parameter.empty for p in named):
        return None
    defaults = {p.name: p.default for p in named}
    positional = [p.name for p in named if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
    rest = params[-1].name

    def bind(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) > len(positional):
            return {"args": args, "kwargs": kwargs}  # the call itself will fail
        inputs = dict(defaults)
        inputs.update(zip(positional, args, strict=False))
        extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in defaults:
                inputs[key] = value
            else:
                extra[key] = value
        inputs[rest] = extra
        return inputs

    return bind


def _kind(cls: type) -> str:
    from dspy import Tool
    from dspy.clients.base_lm import BaseLM
    from dspy.evaluate.evaluate import Evaluate
    from dspy.teleprompt.teleprompt import Teleprompter

    if issubclass(cls, BaseLM):
        return "lm"
    if issubclass(cls, Evaluate):
        return "evaluate"
    if issubclass(cls, Teleprompter):
        return "compile"
    if issubclass(cls, Tool):
        return "tool"
    return "module"


def _compile_key(instance: Any) -> tuple[int, int]:
    return id(instance), threading.get_ident()


def _started(
    start: str, instance: Any, inputs: Any, compiling: bool
) -> tuple[str, tuple[Any, ...], tuple[Any, Any, Any]]:
    """Tell the attached recorders a hooked call started; make its id the current call.

    Returns the call id, the recorders told (the same ones hear how it ended, even if
    one is detached meanwhile) and the context tokens :func:`_ended` resets.
    """
    call_id = new_call_id()
    recorders = _recorders
    for recorder in recorders:
        getattr(recorder, start)(call_id, instance, inputs)
    compile_token = None
    if compiling:
        compile_token = _compiling.set((*_compiling.get(), _compile_key(instance)))
    tokens = (ACTIVE_CALL_ID.set(call_id), current_call.set(call_id), compile_token)
    return call_id, recorders, tokens


def _ended(
    end: str,
    started: tuple[str, tuple[Any, ...], tuple[Any, Any, Any]],
    result: Any,
    error: BaseException | None,
) -> None:
    """Restore the context a hooked call found, then tell its recorders how it ended."""
    call_id, recorders, (active, own, compile_token) = started
    ACTIVE_CALL_ID.reset(active)
    current_call.reset(own)
    if compile_token is not None:
        _compiling.reset(compile_token)
    for recorder in recorders:
        getattr(recorder, end)(call_id, result, error)


def _wrap(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
    bind = _binder(original)
    is_compile = kind == "compile"
    start, end = f"on_{kind}_start", f"on_{kind}_end"

    # The wrappers run on every module and LM call: the checks and the bookkeeping are
    # inline or in two plain functions, with no object made per call.
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def async_hook(instance: Any, *args: Any, **kwargs: Any) -> Any:
            if not _recorders or (is_compile and _compile_key(instance) in _compiling.get()):
                return await original(instance, *args, **kwargs)
            call = _started(start, instance, bind(instance, args, kwargs), is_compile)
            try:
                result = await original(instance, *args, **kwargs)
            except BaseException as error:
                _ended(end, call, None, error)
                raise
            _ended(end, call, result, None)
            return result

        return _mark(async_hook)

    @functools.wraps(original)
    def hook(instance: Any, *args: Any, **kwargs: Any) -> Any:
        if not _recorders or (is_compile and _compile_key(instance) in _compiling.get()):
            return original(instance, *args, **kwargs)
        call = _started(start, instance, bind(instance, args, kwargs), is_compile)
        try:
            result = original(instance, *args, **kwargs)
        except BaseException as error:
            _ended(end, call, None, error)
            raise
        _ended(end, call, result, None)
        return result

    return _mark(hook)


def mark_installed(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Make a patched DSPy method survive other instrumentors' undoing.

    ``functools.wraps`` links the wrapper to the method it wraps (``__wrapped__``); some
    instrumentors undo their own patch by following that chain *to its end*, which would
    strip this wrapper and DSPy's own with it. Without the link, they stop here.
    """
    wrapper.__dict__.pop("__wrapped__", None)
    return wrapper


def _mark(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    setattr(wrapper, _MARK, True)
    return mark_installed(wrapper)


def _is_dspy_wrapper(fn: Any) -> bool:
    """True if ``fn`` is DSPy's callback wrapper, or wraps it (e.g. governance's LM guard)."""
    for _ in range(8):  # a short chain: DSPy's wrapper under at most a few others
        # functools.wraps copies the wrapped method's name; the code object keeps the truth.
        qualname = getattr(getattr(fn, "__code__", None), "co_qualname", "")
        if "with_callbacks.<locals>" in qualname or "with_compile_callbacks.<locals>" in qualname:
            return True
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return False
    return False


def _hook_class(cls: type) -> None:
    """Wrap the class's own DSPy-instrumented methods (those DSPy's callbacks would see)."""
    for name in _METHODS:
        fn = cls.__dict__.get(name)
        if fn is None or getattr(fn, _MARK, False) or not _is_dspy_wrapper(fn):
            continue
        setattr(cls, name, _wrap(_kind(cls), fn))


def _subclasses(root: type) -> Iterator[type]:
    seen: set[type] = set()
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        stack.extend(cls.__subclasses__())


def _roots() -> list[type]:
    import dspy
    from dspy.clients.base_lm import BaseLM
    from dspy.evaluate.evaluate import Evaluate
    from dspy.teleprompt.teleprompt import Teleprompter

    roots: list[type] = [dspy.Module, BaseLM, dspy.Tool, Evaluate, Teleprompter]
    try:
        from dspy.retrievers.retrieve import Retrieve
    except ImportError:  # pragma: no cover - other DSPy layouts
        pass
    else:
        roots.append(Retrieve)
    return roots


def install() -> None:
    """Wrap DSPy's instrumented methods, now and in classes defined later (idempotent)."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch
    with _lock:
        if _installed:
            return
        for root in _roots():
            for cls in _subclasses(root):
                _hook_class(cls)
            _hook_future_subclasses(root)
        _carry_into_worker_threads()
        _installed = True


def _carry_into_worker_threads() -> None:
    """Let DSPy's thread pool carry :data:`current_call` as it carries ACTIVE_CALL_ID."""
    try:
        from dspy.utils import parallelizer
    except ImportError:  # pragma: no cover - other DSPy layouts
        return
    original = getattr(parallelizer, "_bind_active_call_id", None)
    if original is None:  # pragma: no cover - other DSPy layouts
        return

    def bind(fn: Callable[..., Any]) -> Callable[..., Any]:
        parent = current_call.get()
        bound = original(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = current_call.set(parent)
            try:
                return bound(*args, **kwargs)
            finally:
                current_call.reset(token)

        return run

    parallelizer._bind_active_call_id = bind


def _hook_future_subclasses(root: type) -> None:
    """Classes defined after install (a custom optimizer or LM) are hooked as well."""
    original = root.__dict__.get("__init_subclass__")
    parent_hook = original.__func__ if isinstance(original, classmethod) else None

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        if parent_hook is not None:
            parent_hook(cls, **kwargs)
        else:
            parent: Any = super(root, cls)
            parent.__init_subclass__(**kwargs)
        _hook_class(cls)

    setattr(root, "__init_subclass__", classmethod(init_subclass))  # noqa: B010 - a dunder
