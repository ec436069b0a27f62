"""Redactors: rewrite personal data and secrets in text before anything is stored.

A redactor takes a string and returns it with what it recognises replaced by a
placeholder such as ``[email]``. Built-in redactors, chosen by name:

``email``    e-mail addresses
``phone``    telephone numbers (7 to 15 digits, with the usual separators)
``card``     payment card numbers (13 to 19 digits that pass the Luhn check)
``secrets``  bearer tokens and well-known API key formats; always on

Users may add any callable ``str -> str``. Every string of a payload (inputs, outputs,
messages, LM outputs) passes through the redactors; a string that was changed is
flagged in the event's ``payload_notes`` with the redactors that changed it. The
``secrets`` redactor runs whatever the configuration: it cannot be turned off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TextRedactor = Callable[[str], str]


@dataclass(frozen=True)
class NamedRedactor:
    """A redactor and the name its changes are flagged under."""

    name: str
    redact: TextRedactor


@dataclass(frozen=True)
class PatternRedactor:
    """Replaces matches of a pattern (that pass ``accept``, if given) with a placeholder."""

    pattern: re.Pattern[str]
    placeholder: str
    accept: Callable[[str], bool] | None = None
    #: False for a text that surely holds no match: it is skipped without running the
    #: pattern (the always-on secrets pattern is slow on long text).
    may_match: Callable[[str], bool] | None = None
    #: The length of the shortest text the pattern can match.
    shortest: int = 0

    def __call__(self, text: str) -> str:
        """Return ``text`` with the accepted matches replaced."""
        if self.may_match is not None and not self.may_match(text):
            return text
        if self.accept is None:
            return self.pattern.sub(self.placeholder, text)
        accept = self.accept
        return self.pattern.sub(
            lambda m: self.placeholder if accept(m.group(0)) else m.group(0), text
        )


def luhn_valid(number: str) -> bool:
    """True if the digits of ``number`` pass the Luhn check (payment card numbers)."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if index % 2 == 1 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _phone_digits_ok(text: str) -> bool:
    # Dates look like numbers with separators; they are not telephone numbers.
    return 7 <= sum(c.isdigit() for c in text) <= 15 and not _ISO_DATE.fullmatch(text)


EMAIL = PatternRedactor(
    re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "[email]",
    may_match=lambda text: "@" in text,
    shortest=6,  # a@b.cd
)
PHONE = PatternRedactor(
    re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)"
    ),
    "[phone]",
    _phone_digits_ok,
    shortest=7,
)
CARD = PatternRedactor(
    re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)"), "[card]", luhn_valid, shortest=13
)
#: The shortest text the secrets pattern can match ("xoxa-" and ten more characters).
_SHORTEST_SECRET = 15


def _may_hold_secret(text: str) -> bool:
    """False when no alternative of the secrets pattern can match (only "bearer" is
    matched whatever its case; the others are case-sensitive, as in the pattern)."""
    if len(text) < _SHORTEST_SECRET:
        return False
    if "sk-" in text or "AKIA" in text or "xox" in text or "bearer" in text.lower():
        return True
    return "gh" in text and (
        "ghp_" in text or "gho_" in text or "ghu_" in text or "ghs_" in text or "ghr_" in text
    )


SECRETS = PatternRedactor(
    re.compile(
        r"(?i:\bbearer\s+)[A-Za-z0-9._~+/-]{8,}=*"
        r"|\bsk-[A-Za-z0-9_-]{16,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    ),
    "[secret removed]",
    may_match=_may_hold_secret,
    shortest=_SHORTEST_SECRET,
)

#: Redactors users can name, in the order they run; ``secrets`` is always on. Cards
#: run before phones so that a card number is not taken for a telephone number.
BUILT_IN: dict[str, TextRedactor] = {
    "secrets": SECRETS,
    "email": EMAIL,
    "card": CARD,
    "phone": PHONE,
}
ALWAYS_ON: tuple[NamedRedactor, ...] = (NamedRedactor("secrets", SECRETS),)


def build_redactors(chosen: Iterable[str | TextRedactor] | None) -> tuple[NamedRedactor, ...]:
    """The redactors to run: the chosen built-ins (and ``secrets``), then the callables.

    Raises ValueError, naming the built-ins, for an unknown name.
    """
    names = {"secrets"}
    custom: list[NamedRedactor] = []
    for item in chosen or ():
        if isinstance(item, str):
            if item not in BUILT_IN:
                known = ", ".join(sorted(BUILT_IN))
                msg = f"Unknown redactor {item!r}; the built-in redactors are {known}."
                raise ValueError(msg)
            names.add(item)
        elif callable(item):
            custom.append(NamedRedactor(getattr(item, "__name__", type(item).__name__), item))
        else:
            msg = f"A redactor must be a built-in name or a callable, not {item!r}."
            raise ValueError(msg)
    built_in = [NamedRedactor(n, r) for n, r in BUILT_IN.items() if n in names]
    return (*built_in, *custom)


def built_in_names(redactors: Iterable[NamedRedactor]) -> tuple[str, ...] | None:
    """The names of ``redactors`` if all are built-in, else None (a custom callable)."""
    names = []
    for redactor in redactors:
        if BUILT_IN.get(redactor.name) is not redactor.redact:
            return None
        names.append(redactor.name)
    return tuple(names)


#: Texts at least this long are remembered with their redaction ...
_REMEMBER_FROM = 64
#: ... up to this many characters in all (then the memory starts afresh).
_REMEMBER_CHARS = 4_000_000


class Redaction:
    """Runs a set of redactors, remembering the result for long texts seen recently.

    Recorded payloads repeat long texts (a program's system prompt is in every one of
    its LM calls), and redactors are functions of their text alone, so a text's result
    is computed once. Memory is bounded: past :data:`_REMEMBER_CHARS` it starts afresh.
    """

    def __init__(self, redactors: Iterable[NamedRedactor]) -> None:
        self.redactors = tuple(redactors)
        self._recent: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._chars = 0
        # Texts shorter than every redactor's shortest match pass untouched (most of a
        # payload's strings: field names, ids, short answers). A user's callable: 0.
        self._shortest = min((getattr(r.redact, "shortest", 0) for r in self.redactors), default=0)

    def __call__(self, text: str) -> tuple[str, list[str]]:
        """The text with the redactors applied, and the names of those that changed it."""
        if len(text) < self._shortest:
            return text, []
        if len(text) < _REMEMBER_FROM:
            return redact(text, self.redactors)
        known = self._recent.get(text)
        if known is None:
            new, changed = redact(text, self.redactors)
            known = (new, tuple(changed))
            if self._chars + len(text) > _REMEMBER_CHARS:
                self._recent = {}
                self._chars = 0
            self._recent[text] = known
            self._chars += len(text)
        return known[0], list(known[1])


def redact(text: str, redactors: Iterable[NamedRedactor]) -> tuple[str, list[str]]:
    """Run the redactors over ``text``; return the new text and who changed it."""
    changed: list[str] = []
    for redactor in redactors:
        new = redactor.redact(text)
        if new != text:
            changed.append(redactor.name)
            text = new
    return text, changed
