"""What the CLI prints: rich tables on a terminal, plain parseable columns through a pipe, and a
progress bar only where someone watches it."""

from __future__ import annotations

import pytest

from meterway.cli import output

_DIGEST = "2a63939bdc27ad3e2d557a759f961d6cbb7e5d8a8b2647a49388a66f1df24951"


def _not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def test_a_piped_table_is_plain_columns_with_nothing_cut(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _not_a_terminal(monkeypatch)
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal's width must not wrap what goes to a pipe
    output.table(["key_alias", "token", "spend"], [["solo", _DIGEST, "0.00001215"], ["-", "x" * 300, "0"]])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["key_alias", "token", "spend"],
        ["solo", _DIGEST, "0.00001215"],
        ["-", "x" * 300, "0"],
    ]
    assert all(line == line.rstrip() and "\x1b" not in line for line in lines)
    assert lines[0].index("token") == lines[1].index(_DIGEST), "columns line up"


def test_a_terminal_gets_a_rich_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich's own switch: treat stdout as a terminal
    monkeypatch.setenv("COLUMNS", "120")
    output.table(["model", "cost"], [["priced", "0.0000243"]], numeric=["cost"])
    shown = capsys.readouterr().out
    assert "\x1b[1m" in shown and "─" in shown and "0.0000243" in shown, shown


def test_progress_is_silent_unless_stderr_is_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _not_a_terminal(monkeypatch)
    with output.progress("rows", 10) as advance:
        advance(10)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("FORCE_COLOR", "1")
    with output.progress("rows", 10, quiet=True) as advance:
        advance(10)
    assert capsys.readouterr() == ("", "")
    with output.progress("rows", 10) as advance:
        advance(4)
        advance(6)
    shown = capsys.readouterr()
    assert shown.out == "" and "rows" in shown.err and "10/10" in shown.err and "ETA" in shown.err, shown
