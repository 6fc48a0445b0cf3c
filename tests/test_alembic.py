"""pytest-alembic's standard tests of the migrations, on the `engine` fixture (so on SQLite and
on MySQL): one head, every revision upgrades, the migrated schema equals the models, up and
down agree. Without pytest-alembic (requirements-test.txt) this file is skipped."""

import pytest

from conftest import need
from tests.support import ROOT

need("pytest_alembic")
standard = need("pytest_alembic.tests")
test_single_head_revision = standard.test_single_head_revision
test_upgrade = standard.test_upgrade
test_model_definitions_match_ddl = standard.test_model_definitions_match_ddl
test_up_down_consistency = standard.test_up_down_consistency


@pytest.fixture
def alembic_engine(engine):
    return engine


@pytest.fixture
def alembic_config():
    return {"file": str(ROOT / "alembic.ini")}
