"""``sorterbot-cloud db ...``: migrate, status, sessions, benchmark.

Every command reads the settings like the service (``PG_CONN`` or the embedded server
under ``DATA_DIR``), so ``sorterbot-cloud db migrate`` can run as a one-off task before a
deployment (the service also migrates at start; both are safe at once).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _settings(config_file):
    from sorterbot_cloud.config import Settings

    return Settings.load(config_file=config_file)


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $SORTERBOT_CONFIG or config.yaml).",
)


@click.group()
def db() -> None:
    """The store: migrations, sessions, benchmark."""


@db.command("migrate")
@config_option
def migrate_command(config_file) -> None:
    """Apply pending migrations and list what was applied."""
    from sorterbot_cloud.db import Database

    with Database.from_settings(_settings(config_file)) as database:
        applied = database.applied_migrations
    click.echo("\n".join(applied) if applied else "schema is current")


@db.command("status")
@config_option
def status_command(config_file) -> None:
    """Show the applied migrations and whether the database answers."""
    from sorterbot_cloud.db import Database
    from sorterbot_cloud.db.migrate import applied_migrations, load_migrations

    with Database.from_settings(_settings(config_file), run_migrations=False) as database:
        with database.pool.connection() as conn:
            done = applied_migrations(conn)
        ok = database.ping()
    for migration in load_migrations():
        mark = "applied" if migration.version in done else "PENDING"
        click.echo(f"{migration.version:04d}_{migration.name}.sql  {mark}")
    click.echo(f"ping: {'ok' if ok else 'FAILED'}")


@db.command("sessions")
@config_option
@click.option("--arm-id", default=None, help="Only this arm's sessions.")
@click.option("--limit", type=int, default=20, show_default=True)
def sessions_command(config_file, arm_id, limit) -> None:
    """List the latest sessions as JSON lines."""
    from sorterbot_cloud.db import Database, Repository

    with Database.from_settings(_settings(config_file)) as database:
        for record in Repository(database.pool).list_sessions(arm_id=arm_id, limit=limit):
            click.echo(json.dumps(record, default=str))


@db.command("bench")
@click.option("--pg-conn", default=None, help="libpq URI; default: a throw-away embedded server.")
@click.option("--frames", type=int, default=20, show_default=True)
@click.option("--detections", type=int, default=10, show_default=True)
@click.option("--repeats", type=int, default=30, show_default=True)
def bench_command(pg_conn, frames, detections, repeats) -> None:
    """Median save_frame / load_session times and their ratios to reference queries."""
    from sorterbot_cloud.db.bench import run_and_print

    run_and_print(pg_conn, frames=frames, detections=detections, repeats=repeats)


@db.command("reembed")
@config_option
@click.option("--arm-id", required=True, help="The arm whose sessions are re-embedded.")
@click.option("--session-id", "session_ids", multiple=True,
              help="Only this session (repeatable); default: every session of the arm.")
def reembed_command(config_file, arm_id, session_ids) -> None:
    """Embed stored sessions' items again with the configured embedder (after its weights change).

    The stored boxes are kept; each item is cut from its archived frame as at ingest,
    and its colour measured again (items stored before colours were kept get theirs).
    Each session is rewritten in one transaction; one line per session says how many
    items were re-embedded.
    """
    from sorterbot_cloud.db import Database, Repository
    from sorterbot_cloud.embedding import load_embedder
    from sorterbot_cloud.errors import SorterBotError
    from sorterbot_cloud.service import Service
    from sorterbot_cloud.storage import DiskArchive

    settings = _settings(config_file)
    settings.apply_torch_threads()  # as the app does
    embedder = load_embedder(settings)
    with Database.from_settings(settings) as database:
        repository = Repository(database.pool)
        service = Service(settings, detector=None, embedder=embedder, repository=repository,
                          archive=DiskArchive.from_settings(settings))
        try:
            if not session_ids:
                session_ids = [r["session_id"] for r in repository.list_sessions(arm_id=arm_id, limit=None)]
            for session_id in session_ids:
                click.echo(f"{arm_id}/{session_id}: {service.reembed_session(arm_id, session_id)} items re-embedded")
        except SorterBotError as exc:
            raise click.ClickException(exc.detail) from exc
