"""An LM call's parameters are split into what is stored, what is dropped and what is
scrubbed, the same way by the per-call fast path as by the general functions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from commands.secrets import secret_values, split_request, split_secrets

_NAMES = st.sampled_from(
    ["temperature", "max_tokens", "api_key", "auth_token", "api_base", "n", "headers", "seed"]
)
_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["http://user:pw@host:8000/v1", "sk-secret-value"]),
)
_PARAMS = st.dictionaries(
    _NAMES, st.one_of(_VALUES, st.dictionaries(_NAMES, _VALUES, max_size=3)), max_size=6
)


@given(_PARAMS)
def test_split_request_agrees_with_split_secrets_and_secret_values(params: dict[str, Any]) -> None:
    for _ in range(2):  # the second time, the names' verdict comes from memory
        kept, dropped, secrets = split_request(params)
        assert (kept, dropped) == split_secrets(params)
        assert secrets == secret_values(params)


def test_plain_parameters_are_copied_not_shared() -> None:
    params = {"temperature": 0.0, "max_tokens": 100}
    kept, dropped, secrets = split_request(params)
    assert kept == params and kept is not params
    assert dropped == [] and secrets == frozenset()
    kept, dropped, secrets = split_request({**params, "api_key": "sk-123456"})
    assert kept == params and dropped == ["api_key"] and secrets == {"sk-123456"}
    # The same names with a nested dict take the general path (and its nested secrets).
    nested = {"temperature": 0.0, "max_tokens": {"api_key": "sk-abcdef"}}
    assert split_request(nested) == (
        {"temperature": 0.0, "max_tokens": {}},
        ["max_tokens.api_key"],
        frozenset({"sk-abcdef"}),
    )
