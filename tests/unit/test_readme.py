"""The README is the entry point: short, and the two commands first, exactly as CI and a new
user run them (the rest lives in the documentation site under docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/export-poller demo"
TESTS = ".venv/bin/pytest -n 6 --dist worksteal"


def test_the_readme_stays_at_most_200_lines() -> None:
    assert len(README.splitlines()) <= 200


def test_the_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert README.index("```bash") < README.index("\n## ")  # before any section
    assert DEMO in first_block
    assert "pip install -q -e '.[dev]' --config-settings editable_mode=strict" in first_block
    assert TESTS in first_block
    assert TESTS in (ROOT / ".ci" / "run").read_text()  # CI runs the command the README shows


def test_every_page_the_readme_links_exists() -> None:
    links = re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]+)", README)
    assert len(links) >= 10
    assert [link for link in links if not (ROOT / link).is_file()] == []
