"""Shared fixtures: every test that takes `client` runs once on SQLite and once on MySQL."""

import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

import main

MYSQL_URL = os.environ.get("TEST_DATABASE_URL")
MYSQL_SKIPPED = "MySQL cases skipped: set TEST_DATABASE_URL=mysql+pymysql://user:pass@host/db"


def make_engine(backend: str, tmp_path) -> Engine:
    if backend == "sqlite":
        return create_engine(
            f"sqlite:///{tmp_path}/test.db", connect_args={"check_same_thread": False}
        )
    if not MYSQL_URL:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MySQL cases. {MYSQL_SKIPPED}")
        pytest.skip(MYSQL_SKIPPED)
    return create_engine(MYSQL_URL, pool_pre_ping=True)


@pytest.fixture(params=["sqlite", "mysql"])
def engine(request, tmp_path, monkeypatch) -> Iterator[Engine]:
    """The app's engine, pointed at a fresh, empty schema on the backend under test."""
    test_engine = make_engine(request.param, tmp_path)
    main.BaseModelClass.metadata.drop_all(test_engine)
    monkeypatch.setattr(main, "db_engine", test_engine)
    yield test_engine
    test_engine.dispose()


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(main.app) as test_client:  # runs the lifespan: creates the tables
        yield test_client


@pytest.fixture
def rows(engine: Engine):
    """Reads the users table straight from the database, bypassing the API."""

    def read() -> list[tuple[int, str, str]]:
        with Session(engine) as session:
            users = session.scalars(select(main.UserTable).order_by(main.UserTable.id))
            return [(user.id, user.username, user.email) for user in users]

    return read


def pytest_terminal_summary(terminalreporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    count = sum(MYSQL_SKIPPED in str(report.longrepr) for report in skipped)
    if count:
        terminalreporter.write_line(f"{count} {MYSQL_SKIPPED}", yellow=True, bold=True)
