"""Alembic environment: run by ``origin.catalog.migrate`` on a connection it provides."""

from __future__ import annotations

from alembic import context

from origin.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # CockroachDB runs schema changes best outside explicit transactions; SQLite needs batch
    # mode to alter tables.
    transactional_ddl=connection.dialect.name == "sqlite",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
