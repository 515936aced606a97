"""The shape the house keeps, checked on every run: no long functions in the ingestion core or
the upload pipeline (ruff's C901 checks their complexity in ``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where a function may be at most this many lines: the one ingestion core and the upload
# pipeline, the code every usage event goes through.
CHECKED = ("events/ingestion", "uploads")
MAX_FUNCTION_LINES = 60


def _functions(path: Path) -> list[tuple[str, int, bool]]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            length = (node.end_lineno or node.lineno) - first + 1
            # An exception is named where it is made: a C901 noqa with its reason on the def.
            excused = (
                "noqa: C901" in lines[node.lineno - 1]
                and len(lines[node.lineno - 1].split("noqa: C901", 1)[1].strip()) > 3
            )
            found.append((node.name, length, excused))
    return found


@pytest.mark.parametrize("folder", CHECKED)
def test_no_function_is_longer_than_sixty_lines(folder: str) -> None:
    too_long = [
        f"{path.relative_to(ROOT)}: {name} has {length} lines"
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "migrations" not in path.parts
        for name, length, excused in _functions(path)
        if length > MAX_FUNCTION_LINES and not excused
    ]
    assert not too_long, (
        f"Split these into named steps (at most {MAX_FUNCTION_LINES} lines), or name the "
        "exception on the def line with '# noqa: C901  <reason>':\n" + "\n".join(too_long)
    )
