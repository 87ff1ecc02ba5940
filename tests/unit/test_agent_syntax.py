"""The agent runs on whatever python3 the cluster's nodes have: the sandbox
tests it on 3.11 and 3.13 only, so its source at least keeps to 3.8 syntax."""

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "remote_agent"


@pytest.mark.parametrize("path", sorted(AGENT.rglob("*.py")), ids=lambda p: p.name)
def test_the_agent_parses_as_python_3_8(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
