"""Content addressing of DSPy programs and datasets."""

from __future__ import annotations

from typing import Any

from commands.drafts import DatasetDraft, VersionDraft
from commands.payloads import to_json
from commands.secrets import split_secrets
from commands.version_cache import VersionCache
from ledger.domain import ProgramVersion
from ledger.hashing import digest


def module_path(program: Any) -> str:
    """``package.module:ClassName`` of a program, for finding its code again."""
    cls = type(program)
    return f"{cls.__module__}:{cls.__qualname__}"


_versions = VersionCache()


def version_of(program: Any) -> VersionDraft | None:
    """The content-addressed version of a program's current state, or None if unknown.

    The hash covers the module path and the dumped state (``dump_state()``, secrets
    removed), so two different programs with equal state are different versions.
    It is computed again only when the program's state has changed
    (:mod:`commands.version_cache`). The draft is frozen and shared by every caller:
    copying it cost a twentieth of a bare prediction.
    """
    return _versions.get(program, _compute_version)


def _compute_version(program: Any) -> VersionDraft | None:
    dump = getattr(program, "dump_state", None)
    if not callable(dump):
        return None
    try:
        raw_state = dump()
    except Exception:
        return None
    state, _ = to_json(raw_state)
    if isinstance(state, dict):
        state = _strip_secrets(state)
    path = module_path(program)
    state_hash = digest({"module": path, "state": state})
    return VersionDraft(
        version_id=ProgramVersion.id_for(state_hash),
        program_name=type(program).__qualname__,
        module_path=path,
        state=state if isinstance(state, dict) else {"state": state},
        state_hash=state_hash,
    )


def _strip_secrets(state: dict[str, Any]) -> dict[str, Any]:
    kept, _ = split_secrets(state)
    return kept


def example_to_json(example: Any) -> dict[str, Any]:
    """An example as JSON: its fields plus, for ``dspy.Example``, which are inputs."""
    fields, _ = to_json(example)
    if not isinstance(fields, dict):
        fields = {"value": fields}
    input_keys = getattr(example, "_input_keys", None)
    if input_keys:
        return {"fields": fields, "input_keys": sorted(input_keys)}
    return {"fields": fields}


def inputs_digest(inputs: dict[str, Any]) -> str:
    """Digest of a call's inputs, used to link evaluation results to predictions."""
    converted, _ = to_json(inputs)
    return str(digest(converted))


def example_inputs(example: Any) -> dict[str, Any]:
    """The input fields of an example (all fields if it declares none)."""
    inputs = getattr(example, "inputs", None)
    if callable(inputs):
        try:
            value = inputs()
            to_dict = getattr(value, "toDict", None)
            return dict(to_dict()) if callable(to_dict) else dict(value)
        except Exception:
            pass
    to_dict = getattr(example, "toDict", None)
    return dict(to_dict()) if callable(to_dict) else {}


def dataset_of(examples: Any) -> DatasetDraft | None:
    """The content-addressed dataset of a list of examples, or None if not a list."""
    if examples is None:
        return None
    try:
        items = list(examples)
    except TypeError:
        return None
    converted = [example_to_json(example) for example in items]
    example_digests = [digest(example) for example in converted]
    return DatasetDraft(
        digest=digest(example_digests), example_digests=example_digests, examples=converted
    )
