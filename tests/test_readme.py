"""Every ```python block of the README runs as written, and what its comments say a line gives is what it gives.

A comment that starts with a Python literal (``maps.words   # ['a', 'red', ...]``) is compared with the line's
value; one that starts with a repr (``maps   # HeatMaps(8 words ..., 20 steps in 4 bins, ...)``) is matched
against the value's repr, each ``...`` standing for anything. Other comments are prose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def promise(comment: str) -> tuple[str, object] | None:
    """What a comment says the line's value is: ("literal", value), ("repr", pattern) or None (prose)."""
    if comment[:1] in "[('\"{":
        for end in (i + 1 for i, ch in enumerate(comment) if ch in "])'\"}"):
            try:
                return "literal", ast.literal_eval(comment[:end])
            except (ValueError, SyntaxError):
                continue
        return None
    shown = re.match(r"[A-Z]\w*\(.*\)", comment)
    if shown and "..." in shown.group(0):
        return "repr", re.compile(".*".join(re.escape(part) for part in shown.group(0).split("...")))
    return None


def run_block(source: str) -> int:
    """Run `source` statement by statement in a fresh namespace, checking every promise; returns how many."""
    lines = source.splitlines()
    namespace: dict = {}
    checked = 0
    for statement in ast.parse(source).body:
        if not isinstance(statement, ast.Expr):
            exec(compile(ast.Module([statement], type_ignores=[]), "README.md", "exec"), namespace)
            continue
        value = eval(compile(ast.Expression(statement.value), "README.md", "eval"), namespace)
        comment = lines[statement.end_lineno - 1].partition("  # ")[2].strip()
        said = promise(comment) if comment else None
        if said is None:
            continue
        kind, expected = said
        if kind == "literal":
            assert value == expected, f"line {statement.lineno}: {value!r} != {expected!r} (its comment)"
        else:
            assert expected.fullmatch(repr(value)), f"line {statement.lineno}: {value!r} is not {comment}"
        checked += 1
    return checked


def test_the_readme_has_python_blocks_and_promises_are_read():
    assert BLOCKS, "no ```python block found in README.md"
    assert promise("['a', 'b']: the words") == ("literal", ["a", "b"])
    assert promise("(x, y) px; .bbox") is None and promise("PIL image; m.figure(image)") is None
    kind, pattern = promise("HeatMaps(8 words ['a', ...], 20 steps, ...)")
    assert kind == "repr" and pattern.fullmatch("HeatMaps(8 words ['a', 'b'], 20 steps, image 64x64)")
    assert not pattern.fullmatch("HeatMaps(8 words ['a', 'b'], 50 steps, image 64x64)")


@pytest.mark.slow
@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{k}" for k in range(len(BLOCKS))])
def test_readme_python_block_runs_as_written(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write files (maps.save("out/"))
    assert run_block(source) >= 1 or "#" not in source
