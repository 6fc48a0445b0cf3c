"""For the checks (and your test of exercise 5): the fixtures of the project's conftest.py, plus
one safety net. Those fixtures point main.db_engine at a test database; after exercise 6 the
routes open sessions from main.SessionLocal, which is bound here too, for each test that uses
a database. So no check ever writes into your own app.db, whatever SessionLocal is bound to."""

import pytest
from sqlalchemy.orm import sessionmaker

import main


@pytest.fixture(autouse=True)
def session_local_on_the_test_database(request):
    factory = getattr(main, "SessionLocal", None)
    if not isinstance(factory, sessionmaker) or "engine" not in request.fixturenames:
        yield
        return
    bound = factory.kw.get("bind")
    factory.configure(bind=request.getfixturevalue("engine"))
    yield
    factory.configure(bind=bound)
