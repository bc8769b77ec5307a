"""`meterway import litellm --from postgresql://…`: bring a LiteLLM proxy's keys, users, teams,
customers and spend logs over (see docs/migrating-from-litellm.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meterway.config.secret import Secret
from meterway.errors import BadRequest, MeterwayError

if TYPE_CHECKING:  # the importer loads only when a command runs
    from meterway.importer.run import Options, Report


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
    lite.add_argument("--config", help="meterway config whose database_url to write to")
    lite.add_argument("--database-url", help="meterway's database (overrides the config and DATABASE_URL)")


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"--since {text!r} is not a date or time (e.g. 2026-10-01 or 2026-10-01T12:00)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _target_url(args: argparse.Namespace) -> str:
    from meterway.config.load import config_path_from_env, load_settings
    from meterway.config.settings import DEFAULT_DATABASE_URL

    if args.database_url:
        return str(args.database_url)
    config = args.config or config_path_from_env()
    if config:
        return load_settings(config).database_url.reveal()
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def run(args: argparse.Namespace) -> int:
    from meterway.importer.run import Options

    options = Options(
        dry_run=args.dry_run,
        since=_since(args.since),
        salt_key=Secret(salt) if (salt := args.salt_key or os.environ.get("LITELLM_SALT_KEY")) else None,
        export_to_billing=args.export_to_billing,
        seal_key=_seal_key(),
    )
    import sqlalchemy.exc

    try:
        report = asyncio.run(_run(args.source_url, _target_url(args), options))
    except (sqlalchemy.exc.DBAPIError, OSError) as e:
        reason = getattr(e, "orig", None) or e
        raise ImportInterrupted(
            f"writing meterway's database failed ({reason.__class__.__name__}: {str(reason).splitlines()[0][:200]}); "
            "what was written is kept, and running the import again completes it"
        ) from None
    print(render(report))
    return 0


async def _run(source_url: str, target_url: str, options: Options) -> Report:
    from meterway.importer.run import import_litellm
    from meterway.importer.source import open_source
    from meterway.store.runtime import Store

    async with open_source(source_url) as source:
        if options.dry_run and await _empty(target_url):
            return await import_litellm(source, None, options)  # nothing there yet: all of it is new
        store = await Store.open(
            target_url, wait_s=10, run_migrations=not options.dry_run, export=options.export_to_billing
        )
        try:
            return await import_litellm(source, store, options)
        finally:
            await store.close()


async def _empty(url: str) -> bool:
    """Whether meterway's database has no schema yet (a dry run then creates none)."""
    from meterway.store import revision
    from meterway.store.engine import create_engine, wait_for_database
    from meterway.store.url import parse

    engine = create_engine(parse(url))
    try:
        await wait_for_database(engine, 10)
        return await revision.current(engine) is None
    finally:
        await engine.dispose()


def _seal_key() -> Secret | None:
    """The key meterway seals stored models' credentials under, as `serve` finds it."""
    value = (
        os.environ.get("METERWAY_SALT_KEY")
        or os.environ.get("LITELLM_SALT_KEY")
        or os.environ.get("METERWAY_MASTER_KEY")
        or os.environ.get("LITELLM_MASTER_KEY")
    )
    return Secret(value) if value else None


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
