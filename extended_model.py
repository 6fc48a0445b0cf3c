"""Sections 6 and 7 of the tutorial, made runnable: every column option, and the SQL it becomes.

    python extended_model.py                   # CREATE TABLE statements for MySQL (no server)
    python extended_model.py --dialect sqlite  # the same for SQLite

Differences from the tutorial's listing: the `parents` table that its foreign key points to
exists here (the tutorial never defines it, so create_all fails), the timestamp is
timezone-aware (datetime.utcnow is deprecated since Python 3.12), and the base class is the
same `declarative_base` that main.py imports from sqlalchemy.orm.
"""

import argparse
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, func
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.orm import Mapped, declarative_base, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

BaseModelClass = declarative_base()


class ParentTable(BaseModelClass):
    __tablename__ = "parents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), nullable=False)


class ExtendedUserTable(BaseModelClass):
    __tablename__ = "extended_users"
    __table_args__ = {"mysql_charset": "utf8mb4"}

    # 1 type, 2 primary key, 7 autoincrement, 9 comment
    id: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=True, comment="Primary key"
    )
    # 3 index, 4 unique, 5 nullable
    username: Mapped[str] = mapped_column(
        String(50), unique=True, index=True, nullable=False, comment="User name"
    )
    email: Mapped[str] = mapped_column(
        String(120), unique=True, nullable=False, comment="Email address"
    )
    # 6 default: `default` is filled in by Python, `server_default` by the database itself
    is_active: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default="1", nullable=False, comment="Account status"
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        default=lambda: datetime.now(UTC),  # not datetime.utcnow: deprecated, and naive
        server_default=func.now(),
        nullable=False,
        comment="Creation time",
    )
    grade: Mapped[float | None] = mapped_column(Float, comment="User grade")
    # 8 foreign key: to a table that exists
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("parents.id"), comment="The parent row in parents"
    )


def ddl(dialect_name: str) -> str:
    dialect = {"mysql": mysql.dialect(), "sqlite": sqlite.dialect()}[dialect_name]
    statements = []
    for table in BaseModelClass.metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda index: index.name):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    return "\n\n".join(statements)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the DDL of the extended model.")
    parser.add_argument("--dialect", choices=["mysql", "sqlite"], default="mysql")
    print(ddl(parser.parse_args().dialect))
