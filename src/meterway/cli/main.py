"""The `meterway` command: serve, check-config.

Errors a person can fix (a bad config, a missing variable) are printed as one readable line and
exit with status 1; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from meterway import __version__
from meterway.cli import admin, importer, output, reports
from meterway.config.alerting import describe as describe_alerting
from meterway.config.env_files import env_from_files
from meterway.config.load import (
    config_path_from_env,
    demo_settings,
    generate_master_key,
    load_settings,
)
from meterway.config.secret import Secret
from meterway.config.settings import Settings
from meterway.errors import ConfigError, MeterwayError
from meterway.telemetry import logs
from meterway.telemetry.logs import level_from_env

log = logging.getLogger("meterway")

_DEMO_ENV = "METERWAY_DEMO"
_NO_MIGRATE_ENV = "METERWAY_NO_MIGRATE"
_LOG_FORMAT_ENV = "METERWAY_LOG_FORMAT"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meterway", description="A self-hosted LLM gateway that meters every token.")
    p.add_argument("--version", action="version", version=f"meterway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="LiteLLM-format YAML config (default: $METERWAY_CONFIG or $CONFIG_FILE_PATH)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: $METERWAY_LOG_LEVEL or info"
    )
    serve.add_argument("--log-format", choices=["text", "json"], default=None, help="default: text")
    serve.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply database migrations at start")

    migrate = sub.add_parser("migrate", help="create or bring the database schema up to date (idempotent)")
    migrate.add_argument("--config", help="config file whose general_settings.database_url to use")
    migrate.add_argument("--database-url", help="overrides the config and DATABASE_URL")
    migrate.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the database (default 30)")

    admin.add_commands(sub)
    reports.add_commands(sub)
    importer.add_commands(sub)

    check = sub.add_parser("check-config", help="validate a config and print its models, secrets masked")
    check.add_argument("--config", help="config file (default: $METERWAY_CONFIG or $CONFIG_FILE_PATH)")
    check.add_argument(
        "--litellm", metavar="PATH", help="a LiteLLM proxy config: every setting, whether meterway honours it, and why"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so a reader that went away is noticed while it can be handled
    except BrokenPipeError:  # `meterway … | head`: the reader has all it wanted; not an error to report
        return output.closed_pipe()
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    # Before anything reads the environment (the log level included). The process environment
    # itself takes them: every command reads it, and so do `serve`'s worker processes.
    try:
        added, args.env_files = env_from_files(getattr(args, "config", None), Path.cwd(), os.environ)
    except ConfigError as e:
        print(f"meterway: config error: {e.message}", file=sys.stderr)
        return 1
    os.environ.update(added)
    # serve logs at --log-level (or the environment's); one-shot commands print their result and
    # only warnings besides
    long_running = args.command == "serve" or getattr(args, "action", None) == "worker"
    args.log_level = getattr(args, "log_level", None) or level_from_env(default="info" if long_running else "warning")
    args.log_format = getattr(args, "log_format", None) or os.environ.get(_LOG_FORMAT_ENV) or "text"
    logs.configure(args.log_level, args.log_format)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "migrate":
            return migrate(args)
        if args.command in ("keys", "users", "teams", "customers"):
            return admin.run(args)
        if args.command in ("usage", "invoice", "billing", "ledger"):
            return reports.run(args)
        if args.command == "import":
            return importer.run(args)
        return check_config(args)
    except ConfigError as e:
        print(f"meterway: config error: {e.message}", file=sys.stderr)
        return 1
    except MeterwayError as e:  # e.g. the database did not answer in time
        print(f"meterway: {e.message}", file=sys.stderr)
        return 1


def _settings(config: str | None) -> Settings:
    path = config or config_path_from_env()
    if path:
        return load_settings(path)
    return demo_settings()


def prepaid_status(settings: Settings) -> str:
    """`billing.prepaid` as `check-config` and the start-up log say it."""
    if settings.billing is None:
        return "off (no billing section)"
    return settings.billing.prepaid.status()


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1:
        print("meterway: --workers must be at least 1", file=sys.stderr)
        return 1
    settings = _settings(args.config)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    for env_file in args.env_files:
        log.info("read variables not already set from %s", env_file)
    log.info("billing export: %s", settings.billing_export)
    log.info("prepaid credits: %s", prepaid_status(settings))
    master = settings.master_key
    if master is None:
        # Never serve open by accident: a config without a master key gets one for this run.
        master = Secret(generate_master_key())
        settings = _with_key(settings, master)
        print(f"meterway: no master key configured; generated one for this run: {master.reveal()}", file=sys.stderr)
    logs.configure(args.log_level, args.log_format, secrets=(master,))  # from now on no log line shows it
    if settings.demo:
        print(
            "meterway: demo mode (no config): model 'demo' on the built-in mock provider.\n"
            f"meterway: master key: {master.reveal()}",
            file=sys.stderr,
        )
    if args.workers > 1 and settings.redis_url is None:
        log.warning(
            "no Redis configured: rate limits are counted per worker, so %d workers admit up to %d times a "
            "limit; set general_settings.redis_url or REDIS_URL to make them exact",
            args.workers,
            args.workers,
        )
    if args.no_migrate:
        settings = replace(settings, migrate_at_start=False)
    elif args.workers > 1:
        # Migrate once, here, before the workers start: they then only open the store.
        import asyncio

        from meterway.store.runtime import Store

        async def migrate_once() -> None:
            store = await Store.open(
                settings.database_url.reveal(), wait_s=settings.database_wait_s, run_migrations=True
            )
            await store.close()

        asyncio.run(migrate_once())
        os.environ[_NO_MIGRATE_ENV] = "1"
    log.info(
        "serving %d model(s) on http://%s:%d with %d worker(s)",
        len(settings.model_names()),
        args.host,
        args.port,
        args.workers,
    )
    common = {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "none",  # no route speaks WebSocket: its protocol is never imported (about 2 MB per worker)
        "lifespan": "on",
        "log_level": args.log_level,
        "log_config": None,  # uvicorn's loggers propagate to ours: one format, request ids included
        "access_log": args.access_log,
        "server_header": False,
        # SIGTERM: stop accepting, let requests in flight finish, then the lifespan writes the ledger
        "timeout_graceful_shutdown": 30,
    }
    if args.workers == 1:
        import signal

        from meterway.app import create_app

        # uvicorn drains on SIGTERM (stops accepting, finishes requests and streams in flight,
        # then the lifespan flushes ledger, outbox and traces) and re-raises the signal once done;
        # this handler receives it then, so a drained stop exits 0, as orchestrators expect.
        signal.signal(signal.SIGTERM, lambda *_: log.info("stopped on SIGTERM after draining"))
        uvicorn.run(create_app(settings), **common)
        return 0
    # Worker processes rebuild the settings from the environment: the same file, the same key.
    os.environ["METERWAY_MASTER_KEY"] = master.reveal()
    os.environ["METERWAY_LOG_LEVEL"] = args.log_level
    os.environ[_LOG_FORMAT_ENV] = args.log_format
    # Metrics of all workers are summed from files in one directory, fresh for this run (a file
    # left by an earlier run would add its counts to this one's).
    import glob
    import tempfile

    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        os.makedirs(metrics_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(metrics_dir, "*.db")):
            os.remove(stale)
    else:
        metrics_dir = tempfile.mkdtemp(prefix="meterway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if settings.source:
        os.environ["METERWAY_CONFIG"] = os.path.abspath(settings.source)
    else:
        os.environ[_DEMO_ENV] = "1"
    uvicorn.run("meterway.cli.main:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def app_from_env() -> object:
    """Builds the app in a worker process (`--workers N`) from what `serve` put in the environment."""
    from meterway.app import create_app
    from meterway.config.load import master_key_from_env

    logs.configure(level_from_env(), os.environ.get(_LOG_FORMAT_ENV) or "text")  # a fresh process
    settings = demo_settings() if os.environ.get(_DEMO_ENV) == "1" else _settings(None)
    key = master_key_from_env()
    if settings.master_key is None and key is not None:
        settings = _with_key(settings, key)
    logs.configure(level_from_env(), os.environ.get(_LOG_FORMAT_ENV) or "text", secrets=(settings.master_key,))
    if os.environ.get(_NO_MIGRATE_ENV) == "1":
        settings = replace(settings, migrate_at_start=False)
    return create_app(settings)


def _with_key(settings: Settings, key: Secret) -> Settings:
    return replace(settings, master_key=key)


def migrate(args: argparse.Namespace) -> int:
    import asyncio

    from meterway.store.engine import DatabaseUnavailable, create_engine, wait_for_database
    from meterway.store.migrate import migrate as run_migrations
    from meterway.store.url import parse, where

    if args.wait < 0:
        print("meterway: --wait must not be negative", file=sys.stderr)
        return 1
    url = args.database_url or _settings(args.config).database_url.reveal()
    parsed = parse(url)

    async def run() -> str:
        engine = create_engine(parsed)
        try:
            await wait_for_database(engine, args.wait)
            done = await run_migrations(engine)
        finally:
            await engine.dispose()
        if done.before == done.after:
            return f"database at {where(parsed)} is up to date (revision {done.after})"
        return f"database at {where(parsed)} migrated from {done.before or 'empty'} to {done.after}"

    try:
        print(asyncio.run(run()))
    except DatabaseUnavailable as e:
        print(f"meterway: {e.message}", file=sys.stderr)
        return 1
    return 0


def check_config(args: argparse.Namespace) -> int:
    if args.litellm:
        return check_litellm(args.litellm)
    path = args.config or config_path_from_env()
    if not path:
        print("meterway: check-config needs --config PATH (or METERWAY_CONFIG)", file=sys.stderr)
        return 1
    settings = load_settings(path)
    print(f"config: {path}")
    print(
        f"master key: {settings.master_key.masked() if settings.master_key else '(not set: one is generated at serve)'}"
    )
    secret = settings.webhook_secret
    print(f"webhook secret: {secret.masked() if secret else '(not set: usage webhooks take the master key only)'}")
    print(f"max request body: {settings.max_body_bytes} bytes")
    print(f"env files: {', '.join(map(str, args.env_files)) or '(none)'}")
    print(f"billing export: {settings.billing_export}")
    print(f"alerting: {describe_alerting(settings.alerting)}")
    print(f"prepaid credits: {prepaid_status(settings)}")
    print(f"models: {len(settings.model_names())}, deployments: {len(settings.deployments)}")
    for d in settings.deployments:
        key = d.api_key.masked() if d.api_key else "(none)"
        prices = d.prices
        price = (
            f"in {prices.input_per_token}/tok out {prices.output_per_token}/tok"
            if prices.input_per_token is not None or prices.output_per_token is not None
            else "no price"
        )
        print(
            f"  - {d.model_name}: deployment {d.id} -> {d.family}/{d.upstream_model} at {d.api_base or '(in process)'}"
            f" key {key} timeout {d.timeout.total}s, {price}"
        )
    for warning in settings.warnings:
        print(f"warning: {warning}")
    print("ok")
    return 0


def check_litellm(path: str) -> int:
    """Exit 0 when meterway would start with the LiteLLM config as it is, 1 when not."""
    from pathlib import Path

    from meterway.config import litellm_check
    from meterway.config.load import read_yaml

    found = litellm_check.review(read_yaml(Path(path)))
    print(litellm_check.render(found, path))
    return 0 if found.starts else 1
