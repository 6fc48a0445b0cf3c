"""The README's examples are run, so the README cannot drift from the code."""

import importlib.util
import re
import shlex
import subprocess

from fastapi.testclient import TestClient
from sqlalchemy import text

from conftest import emptied, url_of
from tests.support import ROOT, UvicornServer

README = (ROOT / "README.md").read_text()


def curl_blocks() -> list[list[tuple[str, str]]]:
    """For each ```console block of the README, its (command, expected output) pairs."""
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        examples = []
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((command, output))
        blocks.append(examples)
    return blocks


def curl_examples() -> list[tuple[str, str]]:
    return [example for block in curl_blocks() for example in block]


def test_readme_has_a_curl_example_for_every_endpoint_and_error():
    commands = " ".join(command for command, _ in curl_examples())
    for needed in ["-X POST", "-X PATCH", "-X DELETE", "users/1", "/users/?", "after_id="]:
        assert needed in commands
    statuses = [output.split()[-1] for _, output in curl_examples() if output.strip()]
    assert {"200", "201", "204", "404", "409", "422"} <= set(statuses)


def test_readme_curl_examples_give_the_answers_shown(engine):
    """Each block starts on a fresh database, as the README says."""
    for examples in curl_blocks():
        emptied(engine)
        with UvicornServer(url_of(engine)).wait_started() as server:
            for command, expected in examples:
                argv = shlex.split(command.replace("http://127.0.0.1:8000", server.url))
                result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                assert result.stdout == expected.replace("http://127.0.0.1:8000", server.url), (
                    command
                )


def test_readme_shows_the_sql_that_ci_runs():
    script = (ROOT / "scripts" / "mysql-setup.sql").read_text()
    statements = [line for line in script.splitlines() if line and not line.startswith("--")]
    [shown] = re.findall(r"```sql\n(.*?)```", README, re.S)
    assert [line.strip() for line in shown.strip().splitlines()] == statements


def test_readmes_approach_b_runs_in_place_of_part_1s_create_user(engine, tmp_path, monkeypatch):
    [block] = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "SessionLocal" in b]
    source = (ROOT / "main.py").read_text()
    start = source.index('@app.post("/users/", response_model=UserOutput')
    end = source.index("\n\n\n# === Part 2")
    (tmp_path / "main.py").write_text(source[:start] + block + source[end:])
    monkeypatch.setenv("DATABASE_URL", url_of(engine))
    spec = importlib.util.spec_from_file_location("approach_b_main", tmp_path / "main.py")
    approach_b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(approach_b)
    monkeypatch.setattr(approach_b, "db_engine", engine)  # as the tests swap it, after import
    with TestClient(approach_b.app) as client:
        created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
        again = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    assert created.status_code == 201, created.text
    assert again.status_code == 409, again.text
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM users")).scalars().all() == ["ada"]


def echoed_sql(tmp_path, monkeypatch, capsys, part: str) -> list[str]:
    """The SQL that GET /users/ prints on a copy of main.py with echo=True in the first
    create_engine(...) call of the given part."""
    source = (ROOT / "main.py").read_text()
    url = source.index("DB_URL", source.index("create_engine(", source.index(part))) + 6
    (tmp_path / "main.py").write_text(source[:url] + ", echo=True" + source[url:])
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/echo.db")
    spec = importlib.util.spec_from_file_location(f"echoed_{len(part)}", tmp_path / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.app) as client:
        assert client.get("/users/").status_code == 200
    module.db_engine.dispose()
    return [line for line in capsys.readouterr().out.splitlines() if "FROM users" in line]


def test_echo_true_where_the_readme_says_prints_the_sql(tmp_path, monkeypatch, capsys):
    assert "add `echo=True` to the `create_engine(...)` of part 3 (The engine)" in README
    assert echoed_sql(tmp_path, monkeypatch, capsys, "# --- The engine")  # before: in part 1
