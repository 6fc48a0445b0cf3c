"""Each row of the README's errata table, reproduced on today's versions."""

import sys
import threading
from datetime import UTC, datetime

import pymysql._auth
import pytest
from fastapi import FastAPI
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import (
    ArgumentError,
    CompileError,
    IntegrityError,
    MovedIn20Warning,
    NoReferencedTableError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateTable

import main
from main import UserInput, UserTable


def test_declarative_base_from_ext_declarative_warns_it_moved():
    from sqlalchemy.ext.declarative import declarative_base

    with pytest.warns(MovedIn20Warning, match="sqlalchemy.orm.declarative_base"):
        declarative_base()


def test_session_autocommit_true_is_refused():
    with pytest.raises(ArgumentError, match="autocommit=True is no longer supported"):
        Session(autocommit=True)


def test_datetime_utcnow_is_naive_and_deprecated():
    if sys.version_info >= (3, 12):
        with pytest.warns(DeprecationWarning, match="utcnow"):
            assert datetime.utcnow().tzinfo is None
    assert datetime.now(UTC).tzinfo is UTC  # what extended_model.py uses


def test_on_event_is_deprecated():
    with pytest.warns(DeprecationWarning, match="on_event is deprecated"):
        FastAPI().on_event("startup")


def test_pymysql_needs_cryptography_for_mysql_8_login(monkeypatch):
    monkeypatch.setattr(pymysql._auth, "_have_cryptography", False)
    with pytest.raises(RuntimeError, match="'cryptography' package is required"):
        pymysql._auth.sha2_rsa_encrypt(b"password", b"salt" * 5, b"key")


def test_mysql_default_collation_treats_case_variants_as_duplicates(mysql_engine):
    table = Table("collation_demo", MetaData(), Column("name", String(50), unique=True))
    table.drop(mysql_engine, checkfirst=True)
    table.create(mysql_engine)  # the database's default collation, as the tutorial gets
    try:
        with mysql_engine.begin() as connection:
            connection.execute(table.insert(), {"name": "Alice"})
        with pytest.raises(IntegrityError), mysql_engine.begin() as connection:
            connection.execute(table.insert(), {"name": "alice"})
    finally:
        table.drop(mysql_engine)


def kill(engine, connection_id: int) -> None:
    with engine.connect() as admin:
        admin.exec_driver_sql(f"KILL {int(connection_id)}")


@pytest.mark.parametrize("pre_ping", [False, True])
def test_dead_pooled_connection_fails_without_pre_ping(mysql_engine, pre_ping):
    engine = create_engine(mysql_engine.url, pool_pre_ping=pre_ping, pool_size=1)
    with engine.connect() as connection:
        connection_id = connection.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    kill(mysql_engine, connection_id)  # what wait_timeout or a server restart does
    with engine.connect() as connection:
        if pre_ping:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        else:
            with pytest.raises(OperationalError, match=r"Lost connection|gone away"):
                connection.exec_driver_sql("SELECT 1")
    engine.dispose()


def test_string_without_length_does_not_compile_for_mysql():
    table = Table("t", MetaData(), Column("name", String))
    with pytest.raises(CompileError, match="VARCHAR requires a length on dialect mysql"):
        CreateTable(table).compile(dialect=mysql.dialect())


def test_sqlite_file_connections_work_across_threads_without_connect_args(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/threads.db")
    with engine.connect() as connection:  # this connection goes back to the pool ...
        connection.exec_driver_sql("SELECT 1")
    results = []

    def in_another_thread() -> None:  # ... and another thread takes it
        with engine.connect() as connection:
            results.append(connection.exec_driver_sql("SELECT 1").scalar())

    worker = threading.Thread(target=in_another_thread)
    worker.start()
    worker.join()
    assert results == [1]
    engine.dispose()


def test_foreign_key_to_a_table_that_does_not_exist_fails():
    metadata = MetaData()
    Table("orphans", metadata, Column("parent_id", Integer, ForeignKey("parents.id")))
    engine = create_engine("sqlite://")
    with pytest.raises(NoReferencedTableError, match="could not find table 'parents'"):
        metadata.create_all(engine)
    engine.dispose()


def count_statements(engine) -> list[str]:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


def test_refresh_after_commit_costs_a_select_that_expire_on_commit_false_avoids(engine):
    main.BaseModelClass.metadata.create_all(engine)
    statements = count_statements(engine)
    with Session(engine) as session:  # the tutorial: commit, then refresh
        user = UserTable(username="ada", email="ada@example.com")
        session.add(user)
        session.commit()
        session.refresh(user)
    tutorial = len(statements)
    statements.clear()
    with Session(engine, expire_on_commit=False) as session:  # main.py
        user = UserTable(username="grace", email="grace@example.com")
        session.add(user)
        session.commit()
        assert user.id
    assert tutorial == len(statements) + 1
    assert statements[-1].startswith("INSERT")


def test_approach_b_done_safely_commits_and_closes(engine):
    main.BaseModelClass.metadata.create_all(engine)
    SessionLocal = sessionmaker(bind=engine, expire_on_commit=False)  # the README's snippet

    def create_user(user: UserInput):
        with SessionLocal() as session, session.begin():
            new_user = UserTable(username=user.username, email=user.email)
            session.add(new_user)
        return new_user

    assert create_user(UserInput(username="ada", email="ada@example.com")).id == 1
    with pytest.raises(IntegrityError):  # the failed one is rolled back, its connection freed
        create_user(UserInput(username="ada", email="ada@example.com"))
    assert engine.pool.checkedout() == 0


def test_autoflush_decides_whether_a_query_sees_unsaved_objects(engine):
    main.BaseModelClass.metadata.create_all(engine)
    count = select(func.count()).select_from(UserTable)
    with Session(engine) as session:
        session.add(UserTable(username="ada", email="ada@example.com"))
        assert session.scalar(count) == 1
    with Session(engine, autoflush=False) as session:
        session.add(UserTable(username="ada", email="ada@example.com"))
        assert session.scalar(count) == 0


def test_a_rejected_insert_uses_up_an_id_on_mysql_but_not_on_sqlite(client, engine):
    assert (
        client.post("/users/", json={"username": "ada", "email": "a@example.com"}).json()["id"] == 1
    )
    assert (
        client.post("/users/", json={"username": "ada", "email": "a@example.com"}).status_code
        == 409
    )
    grace = client.post("/users/", json={"username": "grace", "email": "g@example.com"}).json()
    assert grace["id"] == (3 if engine.dialect.name == "mysql" else 2)
