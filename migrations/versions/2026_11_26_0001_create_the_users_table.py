"""create the users table, exactly as create_all makes it from main.py's UserTable

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    database = sa.inspect(op.get_bind())
    if database.has_table("users"):
        # Made by create_all before Alembic managed this database: adopt it, rows and all. Only
        # the username's unique rule is renamed, to the name the naming convention gives it.
        if any(index["name"] == "username" for index in database.get_indexes("users")):
            op.execute("ALTER TABLE users RENAME INDEX username TO uq_users_username")  # MySQL
        elif not any(rule["name"] for rule in database.get_unique_constraints("users")):
            # SQLite's rule had no name, and SQLite renames nothing: copy the table to name it.
            naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
            with op.batch_alter_table("users", naming_convention=naming, recreate="always"):
                pass
        return
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=False),
        sa.Column("email", sa.String(length=120), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("users")
