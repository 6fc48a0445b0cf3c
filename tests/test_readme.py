"""The README's examples are run, so the README cannot drift from the code."""

import re
import shlex
import subprocess

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
