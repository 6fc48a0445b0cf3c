"""Alembic's post-write hook (alembic.ini): formats a new revision like the rest of the code.

ruff comes with the test tools (requirements-test.txt), not with the app. Where it is missing,
the revision stays as Alembic wrote it, which runs just the same.
"""

import importlib.util
import subprocess
import sys

if importlib.util.find_spec("ruff") is None:
    print("ruff is not installed (requirements-test.txt): the revision is left as written")
else:
    subprocess.run([sys.executable, "-m", "ruff", "format", *sys.argv[1:]], check=True)
