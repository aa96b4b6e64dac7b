#!/usr/bin/env bash
# The test command (README): install what the tests need, then lint, type-check and test.
# RabbitMQ comes from Debian's packages; the test suite starts and stops its own private nodes.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/rabbitmq_node.py install -
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]"
# The tests run against the installed wheel, not the source tree.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
