"""Alembic's environment: the app's own DATABASE_URL and models (main.py), so that `alembic`
commands work on the database the app uses. See README.md, "Changing the schema"."""

import importlib
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool

# The app whose models autogenerate reads: main.py, or the twin's (`alembic -x app=main_async
# ...`), whose model a learner of the twin changes; both make the same tables.
app = importlib.import_module(context.get_x_argument(as_dictionary=True).get("app", "main"))

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def include_object(item: object, name: str, kind: str, reflected: bool, compare_to: object) -> bool:
    """A table the models do not declare (yours, in a module this file does not import) is left
    out: autogenerate would drop it, with its rows. To drop a table, write op.drop_table()."""
    return not (kind == "table" and reflected and compare_to is None)


OPTIONS = {
    "target_metadata": app.BaseModelClass.metadata,  # what autogenerate compares against
    "include_object": include_object,
    # SQLite cannot change a column in place: "batch" operations copy the table instead. They
    # work on MySQL too, so one revision file serves both.
    "render_as_batch": True,
}


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql` would print a script instead of running the revisions. Ours
    read the database as they run (0001: is the table there? 0002: the names to fold), which a
    script cannot do: refused, with what to do instead."""
    raise CommandError(
        "`--sql` cannot print this project's revisions: they read the database as they run."
        " Back the database up (README: Changing the schema), then run `alembic upgrade head`."
    )


def run_migrations_online() -> None:
    # The tests (and pytest-alembic) hand over an engine of their own; the command line uses
    # the app's DATABASE_URL.
    engine = config.attributes.get("connection") or create_engine(
        app.settings.database_url, poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        # A batch migration on SQLite copies a table, then drops the old one. With foreign keys
        # on, that DROP deletes (ON DELETE CASCADE) the rows that reference it: Alembic's batch
        # documentation says to run with them off. They are back on afterwards.
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
            connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
            connection.commit()  # a PRAGMA is ignored inside a transaction: none is open now
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA foreign_keys = {foreign_keys}")
            connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
