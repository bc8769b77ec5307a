"""The database URL built from DATABASE_HOST and its siblings, as the Helm chart sets them."""

from __future__ import annotations

import pytest

from meterway.config.load import parse_config
from meterway.errors import ConfigError
from meterway.store.url import parse

PARTS = {
    "DATABASE_HOST": "pg.data.svc.cluster.local",
    "DATABASE_PORT": "5432",
    "DATABASE_USERNAME": "meterway",
    "DATABASE_PASSWORD": "p@ss/w%rd:1",
    "DATABASE_NAME": "meterway",
}


def _url(env: dict[str, str]) -> str:
    return parse_config({}, source=None, env=env).database_url.reveal()


def test_url_from_parts_has_one_port_and_the_password_as_written() -> None:
    url = parse(_url(PARTS))
    assert (url.host, url.port) == ("pg.data.svc.cluster.local", 5432)
    assert (url.username, url.database) == ("meterway", "meterway")
    assert url.password == "p@ss/w%rd:1"
    assert url.render_as_string(hide_password=False).count(":5432") == 1


def test_host_that_carries_the_port_twice_is_refused_naming_the_variables() -> None:
    with pytest.raises(ConfigError, match="DATABASE_HOST 'pg:5432' carries a port and DATABASE_PORT is set too"):
        _url({**PARTS, "DATABASE_HOST": "pg:5432"})


def test_host_with_its_port_and_no_database_port_is_taken_as_it_is() -> None:
    url = parse(_url({"DATABASE_HOST": "pg:6432", "DATABASE_USER": "u"}))
    assert (url.host, url.port, url.username, url.password) == ("pg", 6432, "u", None)


def test_database_url_wins_over_parts() -> None:
    assert _url({**PARTS, "DATABASE_URL": "sqlite:///./x.db"}) == "sqlite:///./x.db"


def test_no_parts_means_the_default_sqlite_file() -> None:
    assert _url({}) == "sqlite:///./meterway.db"
