"""Canonical JSON and SHA-256 digests: the basis of content addressing.

Program versions and datasets are identified by what they contain. The digest of a
value is the SHA-256 of its canonical JSON (sorted keys, no insignificant white space,
UTF-8), so equal content gives an equal digest in every process and on every machine.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

#: Namespace of the UUIDv5 ids derived from content digests.
LEDGER_NAMESPACE = uuid.UUID("6f1d2b8e-4c1a-5d7e-9b3a-2f0c8e4d6a11")


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of a JSON-able value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str | bytes) -> str:
    """Return the hex SHA-256 of text (UTF-8 encoded) or bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """Return the hex SHA-256 of the canonical JSON of a JSON-able value."""
    return sha256_hex(canonical_json(value))


def content_id(kind: str, content_digest: str) -> uuid.UUID:
    """Return the stream id that a piece of content of the given kind is stored under."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"{kind}:{content_digest}")
