"""Shared fixtures: every test that takes `client` runs once on SQLite and once on MySQL."""

import atexit
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import URL, Engine, MetaData, create_engine, inspect, make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from tests.galera import MISSING as GALERA_SKIPPED
from tests.support import ROOT, TcpProxy, copy_app, twin_folder


def import_on_no_database(name: str) -> ModuleType:
    """The app, imported with DATABASE_URL on an empty SQLite file of this run's own, deleted at
    its end. The fixtures point its db_engine at the test database; whatever was bound to the
    engine at import (exercise 6's `SessionLocal = sessionmaker(bind=db_engine)`) then reaches
    nothing of yours, and a test file of yours that uses the app as it is runs on that file."""
    folder = tempfile.mkdtemp(prefix="tutorial-tests-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    url = f"sqlite:///{folder}/{name}.db"
    with mock.patch.dict(os.environ, {"DATABASE_URL": url}):  # yours, put back after
        return importlib.import_module(name)


main = import_on_no_database("main")
if Path(__file__).with_name("main_async.py").exists():
    import_on_no_database("main_async")

MYSQL_URL = os.environ.get("TEST_DATABASE_URL")
MYSQL_SKIPPED = "MySQL cases skipped: set TEST_DATABASE_URL=mysql+pymysql://user:pass@host/db"
TOOL_SKIPPED = "not installed: pip install -r requirements-test.txt"


# The tables the suite may drop: the app's, extended_model.py's, the course's, Alembic's, and the
# ones its own tests create. A MySQL test database holding any other is refused (below).
SUITE_TABLES = {"users", "alembic_version", "parents", "extended_users", "posts", "notes"}
SUITE_TABLES |= {"learner_audit", "collation_demo"}


def refuse_a_database_that_is_not_for_tests(url: str) -> str | None:
    """Why pytest must not empty the database of `url`, or None. It drops every table there."""
    test_url, app_url = make_url(url), make_url(main.Settings().database_url)  # not the import's
    if (test_url.host, test_url.port, test_url.database) == (
        app_url.host, app_url.port, app_url.database
    ):  # fmt: skip
        return "it is the app's own DATABASE_URL, and pytest empties its database"
    if "test" not in (test_url.database or ""):
        return f"its database, {test_url.database!r}, is not named for tests (README, section 2)"
    with create_engine(url).connect() as connection:
        theirs = set(inspect(connection).get_table_names()) - SUITE_TABLES
    if theirs:
        return f"its database holds tables the tests did not make: {', '.join(sorted(theirs))}"
    return None


def pytest_sessionstart(session) -> None:
    if MYSQL_URL and (why := refuse_a_database_that_is_not_for_tests(MYSQL_URL)):
        pytest.exit(f"Refusing TEST_DATABASE_URL: {why}. Nothing was dropped.", returncode=4)


def need(tool: str) -> ModuleType:
    """A test tool beyond pytest and httpx2, imported. Without it the test (or, called at the top
    of a file, the whole file) is skipped, as the MySQL cases are. CI has every tool: there, a
    missing one is an error."""
    if os.environ.get("CI"):
        return importlib.import_module(tool)
    return pytest.importorskip(tool, reason=f"{tool} {TOOL_SKIPPED}")


def make_engine(backend: str, tmp_path) -> Engine:
    """An engine built as main.py builds db_engine (its options, read from it),
    on an empty schema: a new SQLite file, or the MySQL test database emptied."""
    if backend == "mysql" and not MYSQL_URL:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MySQL cases. {MYSQL_SKIPPED}")
        pytest.skip(MYSQL_SKIPPED)
    url = MYSQL_URL if backend == "mysql" else f"sqlite:///{tmp_path}/test.db"
    pool = main.db_engine.pool  # the app's pool options, read from its engine: none copied
    test_engine = create_engine(
        url, pool_size=pool.size(), pool_timeout=pool.timeout(), pool_pre_ping=pool._pre_ping
    )
    main.guard_engine(test_engine)  # as main.py does for db_engine
    return emptied(test_engine)


def emptied(engine: Engine) -> Engine:
    """Drops every table there, also Alembic's and ones that other code (exercises) left."""
    everything = MetaData()
    everything.reflect(engine)
    everything.drop_all(engine)
    return engine


@pytest.fixture(params=["sqlite", "mysql"])
def engine(request, tmp_path, monkeypatch) -> Iterator[Engine]:
    """The app's engine, pointed at a fresh, empty schema on the backend under test."""
    test_engine = make_engine(request.param, tmp_path)
    monkeypatch.setattr(main, "db_engine", test_engine)
    yield test_engine
    test_engine.dispose()


@pytest.fixture
def client(engine: Engine, app_module) -> Iterator[TestClient]:  # app_module: main, or its twin
    with TestClient(app_module.app) as test_client:  # runs the lifespan: creates the tables
        yield test_client


@pytest.fixture
def rows(engine: Engine) -> Callable[[], list[tuple[int, str, str]]]:
    """Reads the users table straight from the database, bypassing the API."""

    def read() -> list[tuple[int, str, str]]:
        with Session(engine) as session:
            users = session.scalars(select(main.UserTable).order_by(main.UserTable.id))
            return [(user.id, user.username, user.email) for user in users]

    return read


@pytest.fixture
def learner_app(engine, tmp_path: Path, monkeypatch) -> Iterator[Callable[..., ModuleType]]:
    """Loads a copy of main.py with a learner's code appended, as a student adds it, pointed at
    the test's database: `learner_app(code, DB_POOL_SIZE="1")`; `after="app ="` puts the code
    right after the line that makes the app. Each copy is its own module,
    with its own engine, turns and app, and runs in this process (TestClient, caplog)."""
    loaded: list[ModuleType] = []

    def load(learner_code: str = "", after: str | None = None, **settings: str) -> ModuleType:
        folder = tmp_path / f"learner-app-{len(loaded)}"
        folder.mkdir()
        copy_app(folder, learner_code, after)
        for name, value in {"DATABASE_URL": url_of(engine), **settings}.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(
            f"learner_main_{len(loaded)}", folder / "main.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.db_engine.dispose()


def url_of(engine: Engine, proxy: TcpProxy | None = None) -> str:
    """The engine's URL as a string, password included, pointed at the proxy if one is given."""
    url = engine.url.set(host="127.0.0.1", port=proxy.port) if proxy else engine.url
    return url.render_as_string(hide_password=False)


@pytest.fixture
def mysql_engine(tmp_path) -> Iterator[Engine]:
    """The MySQL test database, emptied: for what only a real server can show."""
    test_engine = make_engine("mysql", tmp_path)
    yield test_engine
    test_engine.dispose()


@pytest.fixture
def make_proxy(mysql_engine: Engine) -> Iterator[Callable[..., TcpProxy]]:
    """Builds TCP proxies in front of the MySQL server (tests/support.py), closed afterwards."""
    made: list[TcpProxy] = []

    def make(**options) -> TcpProxy:
        made.append(TcpProxy(mysql_engine.url.host, mysql_engine.url.port or 3306, **options))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def pytest_unconfigure(config) -> None:
    """After pytest's own last line, one more for each kind of case skipped for want of a
    server, so that "passed" alone never reads as "passed everywhere"."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [str(report.longrepr) for report in reporter.stats.get("skipped", [])]
    if mysql := sum(MYSQL_SKIPPED in reason for reason in skipped):
        reporter.write_line(f"SQLite only: {mysql} {MYSQL_SKIPPED}", yellow=True, bold=True)
    if cluster := sum(GALERA_SKIPPED in reason for reason in skipped):
        reporter.write_line(f"{cluster} {GALERA_SKIPPED}", yellow=True, bold=True)
    wanted = [re.findall(rf"(\S+) {re.escape(TOOL_SKIPPED)}", reason) for reason in skipped]
    if tools := sorted({tool for found in wanted for tool in found}):
        count = sum(map(bool, wanted))
        line = f"{count} cases or files skipped, {', '.join(tools)} {TOOL_SKIPPED}"
        reporter.write_line(line, yellow=True, bold=True)


# === The async twin, main_async.py (issue 32) ================================================
# test_main.py's tests run on both apps: its `client` (and `main`, where a test sets main's
# engine) come from `app_module`, parametrized here for the files below only. Others get main.
BOTH_APPS = {"test_main", "tests.test_hostile_input", "tests.test_migrations"}
BOTH_APPS |= {"tests.test_paging_and_health", "tests.test_database_errors", "tests.test_docs_page"}


@cache
def twin_mirrors_main() -> bool:
    """main_async.py is beside main.py, with its tables and routes. A learner's copy for the
    exercises has no twin, and an exercise changes main.py alone: test_main.py is then main's."""
    if not Path(__file__).with_name("main_async.py").exists():
        return False

    def shape(app: ModuleType) -> tuple:
        tables = {t.name: list(t.columns.keys()) for t in app.BaseModelClass.metadata.sorted_tables}
        routes = {(r.path, *sorted(getattr(r, "methods", None) or ())) for r in app.app.routes}
        return tables, routes

    return shape(main) == shape(importlib.import_module("main_async"))


def pytest_generate_tests(metafunc) -> None:
    if metafunc.module.__name__ in BOTH_APPS and "app_module" in metafunc.fixturenames:
        apps = ["main", "main_async"] if twin_mirrors_main() else ["main"]
        metafunc.parametrize("app_module", apps, indirect=True)


def twin_engine(url: str | URL) -> AsyncEngine:
    """An engine built as main_async.py builds db_engine (its options, read from it), on url in
    main.py's form: main_async picks its async driver itself."""
    twin = importlib.import_module("main_async")
    pool = twin.db_engine.pool  # the twin's pool options, read from its engine: none copied
    test_engine = create_async_engine(
        twin.async_url(url),
        pool_size=pool.size(),
        max_overflow=pool._max_overflow,
        pool_timeout=pool.timeout(),
        pool_pre_ping=pool._pre_ping,
    )
    twin.guard_engine(test_engine.sync_engine)
    return test_engine


class TwinAsMain:
    """main_async, seen through the name `main` in a test written for main.py: an engine the test
    sets (a dead database's, say) becomes the twin's engine on the same URL."""

    def __init__(self, twin: ModuleType, request: pytest.FixtureRequest) -> None:
        self.twin, self.request = twin, request

    def __getattr__(self, name: str) -> object:
        return getattr(self.twin, name)

    @property  # a property: monkeypatch reads and restores it through the twin
    def db_engine(self) -> object:
        return self.twin.db_engine

    @db_engine.setter
    def db_engine(self, engine: object) -> None:
        if not isinstance(engine, Engine):  # monkeypatch, putting one back
            self.twin.db_engine = engine
            return
        replaced, self.twin.db_engine = self.twin.db_engine, twin_engine(engine.url)
        # Put back before the client's shutdown (a finalizer added later runs first), which
        # disposes the engine in use then: its connections are closed on their own event loop.
        self.request.node.addfinalizer(lambda: setattr(self.twin, "db_engine", replaced))


@pytest.fixture(params=["main", "main_async"], ids=["main", "main_async_served"])
def app_folder(request, tmp_path: Path) -> Path:
    """Where `UvicornServer(..., cwd=app_folder)` runs `uvicorn main:app`: main.py, or its twin
    (copied in as main.py). A test on a real server that takes it runs on both apps; the twin's
    runs are named main_async_served (CI's newest Python leaves them out)."""
    return ROOT if request.param == "main" else twin_folder(tmp_path / "twin")


@pytest.fixture
def app_module(request, engine: Engine, monkeypatch) -> ModuleType | TwinAsMain:
    """The app under test: main (the default), or main_async on the same test database."""
    if getattr(request, "param", "main") == "main":
        return main
    twin = TwinAsMain(importlib.import_module("main_async"), request)
    monkeypatch.setattr(twin.twin, "db_engine", twin_engine(url_of(engine)))
    if getattr(request.module, "main", None) is main:  # the test's own `main.db_engine = ...`
        monkeypatch.setattr(request.module, "main", twin)
    return twin  # the client's shutdown (its lifespan) disposes the twin's engine
