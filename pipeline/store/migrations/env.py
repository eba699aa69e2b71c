"""Alembic's entry: migrations run on the connection pipeline.store.migrate hands over, in its transaction."""

from alembic import context

from pipeline.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
