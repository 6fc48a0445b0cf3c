"""What README.md, docs/ and exercises/ name exists (issue 31): every Python name written in
backticks is defined in the project's code, found by parsing it (a definition, not a text
match), or belongs to the tutorial's text or an installed library; every path exists.

A name a learner writes in an exercise counts when the reference solutions define it."""

import ast
import builtins
import importlib
import inspect
import keyword
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "exercises/README.md"]
TUTORIAL = (
    (ROOT.parent / "shared" / "tutorial.md").read_text()
    if (ROOT.parent / "shared" / "tutorial.md").exists()
    else (ROOT / "bench" / "tutorial" / "main.py").read_text()
)
# The libraries whose names the docs use, and the classes whose methods and parameters they name.
MODULES = [
    "builtins",
    "datetime",
    "typing",
    "contextlib",
    "unicodedata",
    "concurrent.futures",
    "fastapi",
    "fastapi.responses",
    "fastapi.concurrency",
    "fastapi.testclient",
    "starlette.middleware.base",
    "starlette.requests",
    "starlette.responses",
    "starlette.websockets",
    "sqlalchemy",
    "sqlalchemy.orm",
    "sqlalchemy.exc",
    "sqlalchemy.pool",
    "sqlalchemy.engine",
    "pydantic",
    "pydantic_settings",
    "alembic.op",
    "anyio",
    "anyio.lowlevel",
]
CLASSES = [
    "sqlalchemy.orm:Session",
    "sqlalchemy.ext.asyncio:AsyncSession",  # the twin's session (docs/async.md)
    "sqlalchemy.orm:sessionmaker",
    "sqlalchemy:Engine",
    "sqlalchemy:Connection",
    "sqlalchemy.orm:Mapped",
    "sqlalchemy.sql.operators:ColumnOperators",
    "pydantic:BaseModel",
    "fastapi:FastAPI",
    "fastapi:WebSocket",
    "starlette.requests:Request",
    "datetime:datetime",
    "fastapi.testclient:TestClient",
    "builtins:str",
]
# Library callables whose documented parameters (":param name:") the docs may name.
DOCUMENTED = [
    "sqlalchemy:create_engine",
    "sqlalchemy.orm:Session",
    "sqlalchemy.orm:sessionmaker",
    "sqlalchemy.orm:mapped_column",
    "sqlalchemy.orm:relationship",
    "sqlalchemy:ForeignKey",
    "sqlalchemy:MetaData",
    "fastapi:FastAPI",
    "fastapi:Depends",
]
# Words in backticks that are not Python names, and why; checked nowhere else.
NOT_PYTHON = {
    "tutorial": "the MySQL database the README's setup makes (scripts/mysql-setup.sql)",
    "timeoutSeconds": "a Kubernetes probe's setting, in the YAML of docs/deploying.md",
    "evs.suspect_timeout": "a Galera provider option the cluster runs with by default",
    "auto_increment_increment": "a MySQL server variable that Galera sets on each node",
    "auto_increment_offset": "another, which Galera sets to each node's own place",
}


@cache
def defined_in_code() -> frozenset[str]:
    """Every name the project's Python code defines: functions, classes, variables, attributes,
    parameters, keyword arguments it passes (the tests run them), imports, table names, and the
    string constants of its tests (usernames, tags), with the reference solutions applied."""
    code = [
        path for path in ROOT.glob("**/*.py") if not {".venv", ".ci-venv-3.11"} & set(path.parts)
    ]
    sources = [path.read_text() for path in code if "venv" not in str(path)]
    sources += [step.main_py for step in course_steps()]  # main.py after each exercise
    names: set[str] = set(requirements())
    while sources:
        try:
            tree = ast.parse(sources.pop())
        except SyntaxError:  # a string that only looked like code
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name | ast.arg):
                names.add(getattr(node, "id", None) or node.arg)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.update((node.asname or node.name).split("."))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.search(r"^(def|class|@app\.) ", node.value, re.M):  # a learner's code
                    sources.append(node.value)
                names.update(re.findall(r"\w+", node.value))  # SQL, settings, usernames, tags
    return frozenset(names)


def requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-test.txt").read_text()
    return set(re.findall(r"^([\w-]+)", lines, re.M))


def course_steps():
    from exercises.make_solutions import Tree, solution_patch

    tree = Tree.today()
    for path in sorted((ROOT / "exercises" / "solutions").glob("*.patch")):
        _patch, tree = solution_patch(path.stem, tree)
        yield tree


@cache
def in_libraries(name: str) -> bool:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            return True
    for spec in CLASSES:
        module_name, class_name = spec.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if hasattr(cls, name):
            return True
        try:
            if name in inspect.signature(cls).parameters:
                return True
        except (TypeError, ValueError):
            pass
    return False


@cache
def documented_parameter(name: str) -> bool:
    for spec in DOCUMENTED:
        module_name, attribute = spec.split(":")
        callable_ = getattr(importlib.import_module(module_name), attribute)
        docs = (callable_.__doc__ or "") + (getattr(callable_, "__init__", None).__doc__ or "")
        if re.search(rf":param {name}[=:]", docs):  # `:param pool_size=5:` gives a default
            return True
    return False


def known(name: str) -> bool:
    return (
        name in defined_in_code()
        or keyword.iskeyword(name)
        or hasattr(builtins, name)
        or re.search(rf"\b{re.escape(name)}\b", TUTORIAL) is not None
        or in_libraries(name)
        or documented_parameter(name)
        or name.lower() in defined_in_code()  # a setting: DB_POOL_SIZE is Settings.db_pool_size
    )


def spans(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks: run elsewhere
    return re.findall(r"`([^`\n]+)`", text)


def python_names(span: str) -> list[str]:
    """The names in a backticked span that parses as Python; none for shell, SQL, HTTP, text."""
    code = span.strip()
    if re.fullmatch(r"[\w.]+(-[\w.]+)+", code) or re.fullmatch(r"[0-9a-f]{7,40}", code):
        return []  # a header, a package, a Galera state, a commit: not Python (commits: below)
    if len(code) <= 2 or re.fullmatch(r"U\+[0-9A-F]{4,6}", code):
        return []  # a character the text is about (`e`, `K`, `ﬁ`), a code point
    if " " in code and not re.search(r"[(=.:\[,]", code):
        return []  # words: a message, a phrase (`database is locked` parses as Python)
    if code.startswith(("with ", "for ", "if ")) and code.endswith(":"):
        code += " pass"
    elif code.startswith(("finally:", "try:")):
        code = "try:\n pass\n" + ("finally: " + code.split(":", 1)[1] if "finally" in code else "")
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append(node.id)
        elif isinstance(node, ast.Attribute):
            found.append(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            found.append(node.arg)
    # An SQL word or a protocol command is one word in capitals (SELECT, COMMIT, PING, KILL).
    return [name for name in found if not (name.isupper() and "_" not in name and name == code)]


def path_like(span: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.*-]*)+|[\w-]+\.(py|md|txt|ini|sql|cfg|toml|db)", span))


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_python_name_in_backticks_exists(doc):
    unknown = sorted(
        {
            f"{name} (in `{span}`)"
            for span in spans(doc)
            if not path_like(span) and span not in NOT_PYTHON
            for name in python_names(span)
            if name not in NOT_PYTHON and not known(name)
        }
    )
    assert unknown == [], f"{doc.name} names what the code does not define: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_path_in_backticks_exists(doc):
    missing = []
    for span in spans(doc):
        if not path_like(span) or "*" in span or span.endswith(".db"):
            continue
        here = any((base / span).exists() for base in (ROOT, doc.parent))
        somewhere = "/" not in span and any(ROOT.glob(f"*/{span}"))  # a file named by its name
        if not (here or somewhere or shutil.which(span)):
            missing.append(span)
    made_by_the_learner = {"exercises/student/test_duplicate_race.py", "exercises/student/"}
    assert sorted(set(missing) - made_by_the_learner) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_commit_named_exists(doc):
    commits = [span for span in spans(doc) if re.fullmatch(r"[0-9a-f]{7,40}", span)]
    for commit in commits:
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT)
        assert found.returncode == 0, f"{doc.name} names commit {commit}, which is not in git"


def test_the_numbers_of_the_latest_benchmark_come_from_its_results_file():
    # docs/performance.md's first table and its ratios, against the file it cites.
    text = (ROOT / "docs" / "performance.md").read_text()
    cited = re.search(r"\(\.\./(bench/results-[\w-]+\.txt)\)", text).group(1)
    results = (ROOT / cited).read_text()
    table = text[text.index("| clients | app |") : text.index("Medians of the paired ratios")]
    ratios = text[text.index("Medians of the paired ratios") : text.index("no drop")]
    numbers = re.findall(r"\d[\d,]*\.\d+x?|\d{1,3},\d{3}|(?<=\| )\d{3}(?= \|)", table + ratios)
    missing = [number for number in numbers if number not in results]
    assert len(numbers) > 60 and missing == [], f"not in {cited}: {missing}"


def runs_on_both_apps(test_file: Path) -> bool:
    """Its cases take conftest.py's app_module (its module is in BOTH_APPS) or app_folder, or
    a fixture of its own is parametrized with both apps."""
    from conftest import BOTH_APPS

    tree = ast.parse(test_file.read_text())
    parameters = {
        arg.arg for node in ast.walk(tree) if isinstance(node, ast.arguments) for arg in node.args
    }
    both = ["main", "main_async"]
    lists = [
        ast.literal_eval(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.List) and all(isinstance(e, ast.Constant) for e in node.elts)
    ]
    return f"tests.{test_file.stem}" in BOTH_APPS or "app_folder" in parameters or both in lists


def test_async_md_lists_exactly_the_test_files_that_run_on_both_apps():
    text = (ROOT / "docs/async.md").read_text()
    section = text[text.index("These also run on both apps") : text.index("What runs on `main")]
    listed = set(re.findall(r"tests/test_\w+\.py", section))
    running = {
        f"tests/{path.name}"
        for path in (ROOT / "tests").glob("test_*.py")
        if runs_on_both_apps(path) and path.name not in ("test_async_twin.py", Path(__file__).name)
    }
    assert listed == running


@pytest.mark.parametrize(
    "doc",
    [*DOCS, ROOT / "bench/tutorial/README.md"],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_every_relative_link_leads_to_a_file(doc):
    """A link is read from the folder of the file that holds it, as GitHub reads it."""
    links = re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
    targets = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:|#", link)]
    missing = [target for target in targets if not (doc.parent / target).exists()]
    assert missing == [], f"{doc.relative_to(ROOT)} links to what is not there: {missing}"


def readme_references():
    """Each "README, section N" and "README: <heading>" in the project's files, where it is."""
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.ini", "*.txt", ".env.example", ".ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in set(files) - {"tests/test_docs_are_true.py"}:
        text = (ROOT / name).read_text()
        for match in re.finditer(r"README(?:, section (\d+)|: ([^).\n]+))", text):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{name}:{line}", match.group(1), match.group(2)


def test_every_readme_section_the_project_names_is_a_heading_of_the_readme():
    headings = re.findall(r"^## (\d+)\. (.+)$", (ROOT / "README.md").read_text(), re.M)
    numbers = {number for number, _ in headings}
    wrong = [  # a title may leave out the heading's end: "Changing the schema (section 5.1...)"
        f"{where}: README{', section ' + number if number else ': ' + title}"
        for where, number, title in sorted(readme_references())
        if (number not in numbers if number else not any(h.startswith(title) for _, h in headings))
    ]
    assert wrong == [], "no such section of the README: " + "; ".join(wrong)


def test_the_cluster_against_one_server_comes_from_the_results_files():
    # docs/deploying.md: the single app on the cluster (its table), against the run it cites
    text = (ROOT / "docs" / "deploying.md").read_text()
    cluster = re.search(r"\| 1 app, node 1 \| (\d+) \| (\d+) \|", text).groups()
    less = re.search(r"about\s+(\d+)% fewer creates and (\d+)% fewer reads", text).groups()
    cited = re.search(r"the same day \((\d+) and (\d+) at 32\s+clients, \[`([^`]+)`", text)
    results = (ROOT / cited.group(3)).read_text()
    for route, one_server in zip(
        ("POST /users/", "GET /users/{id}"), cited.groups()[:2], strict=True
    ):
        assert f"| 1 | 32 | this app | {route} | {one_server} |" in results
    for on_cluster, one_server, percent in zip(cluster, cited.groups()[:2], less, strict=True):
        assert round(100 * (1 - int(on_cluster) / int(one_server))) == int(percent)
    galera = (ROOT / "bench" / "results-2026-11-26-galera.txt").read_text()
    assert all(number in galera for number in cluster)
