"""docs/testing.md shows tests of a user's worker on the embedded broker: they must pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_example_tests_in_docs_testing_md_pass(tmp_path: Path) -> None:
    """The worker, its tests and the raw-channel test of docs/testing.md run and pass under
    pytest (warnings as errors), as a user would run them."""
    files = {}
    for block in python_blocks():
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            files[first[2:]] = block
        elif "async def test_" in block:
            files["tests/test_raw.py"] = block
    assert set(files) == {"myapp/tasks.py", "tests/test_tasks.py", "tests/test_raw.py"}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
