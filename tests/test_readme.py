"""The README's examples are run, so the README cannot drift from the code."""

import re
import shlex
import subprocess

from conftest import url_of
from tests.support import ROOT, UvicornServer

README = (ROOT / "README.md").read_text()


def curl_examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the README's ```console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((command, output))
    return examples


def test_readme_has_a_curl_example_for_every_endpoint_and_error():
    commands = " ".join(command for command, _ in curl_examples())
    for needed in ["-X POST", "-X PATCH", "-X DELETE", "users/1", "/users/?"]:
        assert needed in commands
    statuses = [output.split()[-1] for _, output in curl_examples()]
    assert {"200", "201", "204", "404", "409", "422"} <= set(statuses)


def test_readme_curl_examples_give_the_answers_shown(engine):
    with UvicornServer(url_of(engine)).wait_started() as server:
        for command, expected in curl_examples():
            argv = shlex.split(command.replace("http://127.0.0.1:8000", server.url))
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert result.stdout == expected, command


def test_readme_shows_the_sql_that_ci_runs():
    script = (ROOT / "scripts" / "mysql-setup.sql").read_text()
    statements = [line for line in script.splitlines() if line and not line.startswith("--")]
    [shown] = re.findall(r"```sql\n(.*?)```", README, re.S)
    assert [line.strip() for line in shown.strip().splitlines()] == statements
