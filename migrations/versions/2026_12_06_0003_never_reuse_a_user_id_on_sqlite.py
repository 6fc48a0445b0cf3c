"""users: never reuse a deleted user's id on SQLite (AUTOINCREMENT), as MySQL never does

Without AUTOINCREMENT, SQLite gives a new row the largest id plus one: delete the newest user,
and the next one gets that id back, so a client still holding it reads or changes someone else.
SQLite cannot add AUTOINCREMENT to a table that exists: batch mode copies it into a new one,
every row kept (migrations/env.py turns foreign keys off meanwhile). MySQL and MariaDB never
reuse an id: there this revision changes nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

sqlite_only = True  # on MySQL the schema stays as it is (tests/test_migrations.py reads this)


def upgrade() -> None:
    autoincrement(True)


def downgrade() -> None:
    autoincrement(False)


def autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        kwargs = {"sqlite_autoincrement": on}
        with op.batch_alter_table("users", recreate="always", table_kwargs=kwargs):
            pass  # the copy is the change: the same columns, keys and rows
