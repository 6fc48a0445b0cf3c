"""extended_model.py: every column option of section 6 is really in the database's schema."""

import subprocess
import sys

from sqlalchemy import inspect, text

import extended_model
from tests.support import ROOT


def run_ddl(*args: str) -> str:
    command = [sys.executable, "-W", "error", "extended_model.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_prints_mysql_ddl_without_a_server():
    ddl = run_ddl()
    for expected in [
        "CREATE TABLE parents",
        "id INTEGER NOT NULL COMMENT 'Primary key' AUTO_INCREMENT",
        "username VARCHAR(50) NOT NULL COMMENT 'User name'",
        "is_active BOOL NOT NULL COMMENT 'Account status' DEFAULT '1'",
        "UNIQUE (email)",
        "FOREIGN KEY(parent_id) REFERENCES parents (id)",
        "CREATE UNIQUE INDEX ix_extended_users_username ON extended_users (username);",
    ]:
        assert expected in ddl


def test_prints_sqlite_ddl():
    ddl = run_ddl("--dialect", "sqlite")
    assert "created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL" in ddl
    assert "AUTO_INCREMENT" not in ddl and "COMMENT" not in ddl  # SQLite has neither


def test_every_column_option_is_in_the_mysql_schema(mysql_engine):
    metadata = extended_model.BaseModelClass.metadata
    metadata.drop_all(mysql_engine)
    metadata.create_all(mysql_engine)
    try:
        schema = inspect(mysql_engine)
        columns = {column["name"]: column for column in schema.get_columns("extended_users")}
        assert str(columns["username"]["type"]).startswith("VARCHAR(50)")  # 1 type
        assert schema.get_pk_constraint("extended_users")["constrained_columns"] == ["id"]  # 2
        indexes = {index["name"]: index for index in schema.get_indexes("extended_users")}
        assert indexes["ix_extended_users_username"]["unique"]  # 3 index, 4 unique
        assert any(
            index["column_names"] == ["email"] and index["unique"] for index in indexes.values()
        )
        assert columns["email"]["nullable"] is False and columns["grade"]["nullable"]  # 5
        assert columns["is_active"]["default"] == "1"  # 6 default, kept by the server
        assert columns["id"]["autoincrement"] is True  # 7
        [foreign_key] = schema.get_foreign_keys("extended_users")  # 8
        assert foreign_key["referred_table"] == "parents"
        assert foreign_key["constrained_columns"] == ["parent_id"]
        assert columns["username"]["comment"] == "User name"  # 9
        with mysql_engine.connect() as connection:
            created = connection.execute(text("SHOW CREATE TABLE extended_users")).one()[1]
        assert "AUTO_INCREMENT" in created and "COMMENT 'Creation time'" in created
    finally:
        metadata.drop_all(mysql_engine)
