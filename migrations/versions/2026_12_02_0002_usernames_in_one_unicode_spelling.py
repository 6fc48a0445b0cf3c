"""usernames: one Unicode spelling each (NFKC), as the app stores them since this revision

A database may hold names written before the app folded them: "José" as e plus a combining
accent, "Kevin" with the Kelvin sign. This revision folds each one as main.username_rules() does.
When two rows would become the same name, it changes nothing and stops with a message that lists
them: a person decides which one keeps the name. It never drops or merges a row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

data_only = True  # the schema stays as it is (tests/test_migrations.py reads this)
users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String(50)))


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)).all()
    by_folded_name: dict[str, list] = {}
    for row in rows:
        by_folded_name.setdefault(unicodedata.normalize("NFKC", row.username), []).append(row)
    clashes = [group for group in by_folded_name.values() if len(group) > 1]
    too_long = [name for name in by_folded_name if len(name) > 50]
    if clashes or too_long:
        listed = "; ".join(
            ", ".join(f"id {row.id} {row.username!a}" for row in group) for group in clashes
        )
        raise RuntimeError(
            "Revision 0002 changed no row (the revisions before it stay applied). These"
            " usernames are the same text in Unicode (NFKC), so the"
            f" app can no longer tell them apart: {listed or 'none'}. Folded, these are longer"
            f" than 50 characters: {too_long or 'none'}. Rename all but one of each group (or"
            " shorten), then run `alembic upgrade head` again (docs/usernames.md)."
        )
    for folded_name, [row] in by_folded_name.items():
        if row.username != folded_name:
            connection.execute(
                users.update().where(users.c.id == row.id).values(username=folded_name)
            )


def downgrade() -> None:
    pass  # the spellings before the fold are not kept: a downgrade leaves the folded names
