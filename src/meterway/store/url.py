"""Database URLs: where they come from, how they are checked, how they are shown.

A URL is checked before any connection is tried, so a mistake in it (a host that still carries
`:5432`, a port that is not a number, an unknown scheme) is reported as that mistake, not as an
endless "waiting for database". Every URL that reaches a message or a log line has its password
replaced by stars.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from meterway.errors import ConfigError

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def redact(url: str) -> str:
    """The URL with its password replaced, even when the URL is too broken to parse."""
    return _PASSWORD.sub(r"\1***@", url)


def parse(url: str) -> URL:
    """The URL as SQLAlchemy needs it (async drivers), or a ConfigError saying what is wrong with it."""
    shown = redact(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"malformed database URL {shown}: {e}") from None
    driver = _DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ConfigError(
            f"unsupported database URL scheme '{parsed.drivername}' in {shown}; use postgresql://… or sqlite:///…"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("postgresql"):
        host = unquote(parsed.host or "")
        if not host:
            raise ConfigError(f"malformed database URL {shown}: no host")
        if ":" in host.strip("[]") and not host.startswith("["):
            raise ConfigError(
                f"malformed database URL {shown}: the host '{host}' carries a port; "
                "write the port once, after the host (postgresql://user:password@host:5432/db)"
            )
    return parsed


def where(url: URL) -> str:
    """`host:port` (or the SQLite file) for messages: never the password."""
    if url.drivername.startswith("sqlite"):
        return f"SQLite file {url.database or ':memory:'}"
    return f"{url.host}:{url.port or 5432}"


def named(url: URL) -> str:
    """The database by name for messages: the SQLite file, or `name at host:port`; never the password."""
    if url.drivername.startswith("sqlite"):
        return url.database or ":memory:"
    return f"{url.database or '(default)'} at {where(url)}"
