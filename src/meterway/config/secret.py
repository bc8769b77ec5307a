"""A value that must never be printed: API keys, the master key, DSN passwords."""

from __future__ import annotations

import hmac


class Secret:
    """Holds a secret string. `repr`, `str` and f-strings show stars, so a secret that slips into a
    log line or an error message shows nothing; code that needs the value asks for it by name."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: bytes | str) -> bool:
        """Constant-time comparison, so the time a wrong key takes says nothing about the right one."""
        if isinstance(candidate, str):
            candidate = candidate.encode()
        return hmac.compare_digest(candidate, self._value.encode())

    def masked(self) -> str:
        """A hint for humans (`sk-...ab12`), for check-config output; never the whole value."""
        v = self._value
        if len(v) <= 8:
            return "****"
        return f"{v[:3]}...{v[-4:]}"

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)
