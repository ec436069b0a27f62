"""Keeping secrets out of the record.

Request parameters whose *names* look like credentials are dropped before anything is
stored (their names are kept in the event so a reader knows something was removed), and
the *values* of credentials known to the LM are scrubbed from every stored string.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# "token" only as a whole word or suffix: max_tokens is a parameter, auth_token a secret.
_SECRET_NAME = re.compile(
    r"(api[_-]?key|apikey|secret|password|passwd|authorization|bearer|credential|"
    r"private[_-]?key|access[_-]?key|session[_-]?key|cookie|(^|[_-])token$)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True if a parameter with this name must never be stored."""
    known = _secret_names.get(name)
    if known is None:
        known = bool(_SECRET_NAME.search(name))
        if len(_secret_names) < _MAX_REMEMBERED:  # parameter names are few; stay bounded
            _secret_names[name] = known
    return known


# Every LM call's parameters are checked by name; the answer is remembered per name.
_secret_names: dict[str, bool] = {}
_MAX_REMEMBERED = 10_000


def split_secrets(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return (params without secret-named keys, recursively; names that were dropped)."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in params.items():
        if is_secret_name(str(key)):
            dropped.append(str(key))
        elif isinstance(value, dict):
            inner, inner_dropped = split_secrets(value)
            kept[key] = inner
            dropped.extend(f"{key}.{name}" for name in inner_dropped)
        elif isinstance(key, str) and key.endswith("api_base") and isinstance(value, str):
            kept[key] = strip_url_credentials(value)
        else:
            kept[key] = value
    return kept, dropped


def split_request(params: dict[str, Any]) -> tuple[dict[str, Any], list[str], frozenset[str]]:
    """:func:`split_secrets` and :func:`secret_values` of an LM call's parameters at once.

    Runs on every LM call, whose parameters are nearly always the same few names with
    plain values: when none of the names needs a look (remembered per set of names) and
    no value is a dict, the parameters are kept as they are, without a Python loop.
    """
    names = tuple(params)
    plain = _plain_names.get(names)
    if plain is None:
        plain = not any(
            not isinstance(name, str) or is_secret_name(name) or name.endswith("api_base")
            for name in names
        )
        if len(_plain_names) < _MAX_REMEMBERED:
            _plain_names[names] = plain
    if plain and not any(issubclass(kind, dict) for kind in set(map(type, params.values()))):
        return dict(params), [], _NO_SECRETS
    kept, dropped = split_secrets(params)
    return kept, dropped, secret_values(params)


# Sets of parameter names that hold no secret and no URL to clean (see split_request).
_plain_names: dict[tuple[Any, ...], bool] = {}
_NO_SECRETS: frozenset[str] = frozenset()


def strip_url_credentials(url: str) -> str:
    """Remove a ``user:password@`` part from a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def secret_values(params: dict[str, Any]) -> frozenset[str]:
    """Return the string values of secret-named params (to scrub wherever they appear)."""
    values: set[str] = set()
    for key, value in params.items():
        if isinstance(value, str) and is_secret_name(str(key)) and len(value) >= 6:
            values.add(value)
        elif isinstance(value, dict):
            values |= secret_values(value)
    return frozenset(values)
