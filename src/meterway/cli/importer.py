"""`meterway import litellm --from postgresql://…`: bring a LiteLLM proxy's keys, users, teams,
customers and spend logs over (see docs/migrating-from-litellm.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meterway.config.secret import Secret
from meterway.errors import BadRequest, MeterwayError

if TYPE_CHECKING:  # the importer loads only when a command runs
    from rich.progress import Progress as RichProgress

    from meterway.config.settings import Settings
    from meterway.importer.run import Options, Progress, Report


class ImportInterrupted(MeterwayError):
    """meterway's database failed mid-import; the message says what to do."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import", help="bring another gateway's keys, tenants and spend over")
    kinds = p.add_subparsers(dest="source", required=True)
    lite = kinds.add_parser("litellm", help="from a LiteLLM proxy's PostgreSQL database (read-only)")
    lite.add_argument("--from", dest="source_url", required=True, help="the LiteLLM database: postgresql://…")
    lite.add_argument("--dry-run", action="store_true", help="write nothing; print what would be imported and why not")
    lite.add_argument("--since", help="spend logs from this UTC date or time on (e.g. 2026-10-01); default: all")
    lite.add_argument(
        "--salt-key",
        help="LiteLLM's LITELLM_SALT_KEY (or its master key if it had none), to open stored models' "
        "credentials; default: $LITELLM_SALT_KEY",
    )
    lite.add_argument(
        "--export-to-billing", action="store_true", help="send imported spend to Lago too (default: history only)"
    )
    lite.add_argument(
        "--without-models",
        action="store_true",
        help="leave LiteLLM's stored models behind (e.g. when its salt key is lost); everything else comes over",
    )
    lite.add_argument(
        "--config", help="meterway config: its database_url is written to, its master key seals stored models"
    )
    lite.add_argument("--database-url", help="meterway's database (overrides the config and DATABASE_URL)")


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"--since {text!r} is not a date or time (e.g. 2026-10-01 or 2026-10-01T12:00)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _settings(args: argparse.Namespace) -> Settings:
    """meterway's settings as `serve` would read them: the config file, else the environment alone."""
    from meterway.config.load import config_path_from_env, load_settings, parse_config

    config = args.config or config_path_from_env()
    return load_settings(config) if config else parse_config({}, source=None)


def run(args: argparse.Namespace) -> int:
    from meterway.importer.run import Options

    settings = _settings(args)
    options = Options(
        dry_run=args.dry_run,
        since=_since(args.since),
        salt_key=Secret(salt) if (salt := args.salt_key or os.environ.get("LITELLM_SALT_KEY")) else None,
        export_to_billing=args.export_to_billing,
        seal_key=settings.seal_key,  # the key `serve` opens stored models with
        models=not args.without_models,
    )
    target = str(args.database_url) if args.database_url else settings.database_url.reveal()
    import sqlalchemy.exc

    try:
        with _progress() as progress:
            report = asyncio.run(_run(args.source_url, target, options, progress))
    except (sqlalchemy.exc.DBAPIError, OSError) as e:
        reason = getattr(e, "orig", None) or e
        raise ImportInterrupted(
            f"writing meterway's database failed ({reason.__class__.__name__}: {str(reason).splitlines()[0][:200]}); "
            "what was written is kept, and running the import again completes it"
        ) from None
    print(render(report))
    return 0


async def _run(source_url: str, target_url: str, options: Options, progress: Progress | None) -> Report:
    """Every precondition first (both databases reachable, meterway's schema at a revision this
    import may use, stored models' keys), then the import."""
    from meterway.importer.preflight import check_models, check_revision
    from meterway.importer.run import import_litellm
    from meterway.importer.source import open_source
    from meterway.store.runtime import Store
    from meterway.store.url import parse, where

    async with open_source(source_url) as source:
        at = await _revision(target_url)
        check_revision(at, where(parse(target_url)), dry_run=options.dry_run)
        if options.models:
            check_models(await source.rows("LiteLLM_ProxyModelTable"), options.salt_key, options.seal_key)
        if options.dry_run and at is None:
            return await import_litellm(source, None, options, progress)  # nothing there yet: all of it is new
        store = await Store.open(
            target_url, wait_s=10, run_migrations=not options.dry_run, export=options.export_to_billing
        )
        try:
            return await import_litellm(source, store, options, progress)
        finally:
            await store.close()


async def _revision(url: str) -> str | None:
    """meterway's database reached, and its schema revision (None: no schema yet)."""
    from meterway.store import revision
    from meterway.store.engine import create_engine, wait_for_database
    from meterway.store.url import parse

    engine = create_engine(parse(url))
    try:
        await wait_for_database(engine, 10)
        return await revision.current(engine)
    finally:
        await engine.dispose()


@contextmanager
def _progress() -> Iterator[Progress | None]:
    """A progress bar with an ETA over the spend logs, on a terminal only (a pipe or a log file gets
    the report alone)."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich import progress as rich

    columns = (
        rich.TextColumn("spend logs"),
        rich.BarColumn(),
        rich.MofNCompleteColumn(),
        rich.TextColumn("[progress.percentage]{task.percentage:>3.0f}%"),
        rich.TimeElapsedColumn(),
        rich.TextColumn("ETA"),
        rich.TimeRemainingColumn(),
    )
    with rich.Progress(*columns, transient=True) as bar:
        yield _Bar(bar)


class _Bar:
    """The importer's `Progress` drawn by rich: the total once it is counted, then page by page."""

    def __init__(self, bar: RichProgress) -> None:
        self._bar = bar
        self._task = bar.add_task("spend logs", total=None)

    def start(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def advance(self, done: int) -> None:
        self._bar.advance(self._task, done)


def render(report: Report) -> str:
    lines = [f"LiteLLM database {report.source} (read-only){': dry run, nothing written' if report.dry_run else ''}"]
    verb = "would import" if report.dry_run else "imported"
    for name, t in report.tallies.items():
        lines.append(
            f"  {name}: {t.found} found, {verb} {t.new}, {t.present} already in meterway (kept as they are)"
            + (f", {t.skipped} not importable" if t.skipped else "")
        )
    lines.append(f"  cost of the spend logs {'to import' if report.dry_run else 'imported'}: {report.new_cost:f} USD")
    if report.models:
        lines.append("  stored models (served with STORE_MODEL_IN_DB=True, credentials sealed under meterway's key):")
        for m in report.models:
            lines.append(
                f"  - {m.model_name} (id {m.model_id}): model {m.model or '?'}, api_base {m.api_base or '(default)'}; "
                f"credentials {m.credentials}"
            )
    # every one, however many: the point of a dry run is to see them all (grep the output)
    lines += [f"not imported: {s.table} {s.ident}: {s.reason}" for s in report.skipped]
    lines += [f"changed: {s.table} {s.ident}: {s.reason}" for s in report.notes]
    if not report.dry_run:
        lines.append("done" if report.changed else "nothing new: meterway already has everything")
    return "\n".join(lines)
