"""House rules a reader relies on: no module of the service over 400 lines, no function over 40.

The service is `tasks/` and `providers/` (the simulator is a test fixture, not the service). A
function is counted from its `def` to its last line, docstring included, decorators not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOST_MODULE_LINES = 400
MOST_FUNCTION_LINES = 40


def service_modules() -> list[Path]:
    found = [*sorted((ROOT / "tasks").rglob("*.py")), *sorted((ROOT / "providers").rglob("*.py"))]
    return [p for p in found if "simulator" not in p.relative_to(ROOT).parts]


def too_long(source: str) -> list[str]:
    """What in one module's source breaks the house limits, as readable lines."""
    problems = []
    lines = len(source.splitlines())
    if lines > MOST_MODULE_LINES:
        problems.append(f"{lines} lines (at most {MOST_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MOST_FUNCTION_LINES:
                problems.append(
                    f"{node.name}() at line {node.lineno}: {length} lines "
                    f"(at most {MOST_FUNCTION_LINES})"
                )
    return problems


def test_the_check_finds_a_long_module_and_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(40))
    assert too_long(f"def fits():\n{body[: body.rindex(chr(10))]}\n") == []
    assert too_long(f"def long():\n{body}\n") == ["long() at line 1: 41 lines (at most 40)"]
    assert too_long("x = 1\n" * 401) == ["401 lines (at most 400)"]


def test_the_service_is_made_of_modules_a_reader_can_hold() -> None:
    modules = service_modules()
    assert ROOT / "tasks" / "engine.py" in modules and len(modules) > 30
    problems = {
        str(p.relative_to(ROOT)): found for p in modules if (found := too_long(p.read_text()))
    }
    assert problems == {}


def test_every_redis_script_is_a_lua_file_that_names_its_keys_and_args() -> None:
    from export_poller.store import lua

    scripts = sorted((ROOT / "tasks" / "store" / "scripts").glob("*.lua"))
    assert len(scripts) >= 15  # the store's scripts and the account guard's
    for path in scripts:
        assert "KEYS[1]" in lua.source(path.stem), path.name  # the loader checks the header
    python = [*(ROOT / "tasks").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]
    inline = [p.name for p in python if "redis.call(" in p.read_text()]
    assert inline == [], "Lua belongs in tasks/store/scripts/, one file per script"
