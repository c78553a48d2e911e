"""Every ```python code block in README.md and docs/*.md runs.

The blocks of one file run in order in one namespace (later blocks may use
names defined earlier), in a temporary working directory. Blocks fenced with
another language (``bash``, plain ```) are not run. A block directly preceded
by the line ``<!-- docs-test: skip -->`` is skipped: use it only for commands
too long for a unit test (full meta-training runs), and show a scaled-down
runnable version next to it. A file containing the line
``<!-- docs-test: slow -->`` runs only with the slow tests (``pytest -m slow``).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP_MARKER = "<!-- docs-test: skip -->"
SLOW_MARKER = "<!-- docs-test: slow -->"
_FENCE = re.compile(r"^```(\S*)\s*$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
  """Returns ``(line number, code, skipped)`` for each ```python block of ``text``."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    lang, start = m.group(1), i
    j = i + 1
    while j < len(lines) and lines[j].rstrip() != "```":
      j += 1
    if lang in ("python", "py"):
      prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
      blocks.append((start + 1, "\n".join(lines[start + 1:j]), prev == SKIP_MARKER))
    i = j + 1
  return blocks


def _doc_files() -> list[pathlib.Path]:
  return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.exists()]


def _params() -> list:
  return [pytest.param(p, id=str(p.relative_to(ROOT)),
                       marks=[pytest.mark.slow] if SLOW_MARKER in p.read_text() else [])
          for p in _doc_files()]


def test_block_parser():
  text = ("x\n```python\na = 1\n```\n```bash\nls\n```\n" + SKIP_MARKER
          + "\n\n```python\nslow()\n```\n")
  assert python_blocks(text) == [(2, "a = 1", False), (10, "slow()", True)]


def test_there_are_docs():
  assert any(python_blocks(p.read_text()) for p in _doc_files())


@pytest.mark.parametrize("path", _params())
def test_code_blocks_run(path, tmp_path, monkeypatch):
  blocks = python_blocks(path.read_text())
  if not any(not skipped for _, _, skipped in blocks):
    pytest.skip(f"{path.name} has no runnable python blocks")
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": f"docs_{path.stem}"}
  for line, code, skipped in blocks:
    if skipped:
      continue
    try:
      exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
    except Exception as e:
      raise AssertionError(f"code block at {path.relative_to(ROOT)}:{line} failed: "
                           f"{type(e).__name__}: {e}") from e


def test_api_page_lists_every_public_name():
  import importlib
  import importlib.util

  spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
  gen_api = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen_api)
  text = gen_api.render()
  # The committed page is exactly what the generator writes, so it cannot go stale.
  assert gen_api.OUT.read_text() == text, "docs/api.md is out of date: python docs/gen_api.py"
  for pkg in gen_api.PACKAGES:
    assert f"## {pkg}" in text
    for name in importlib.import_module(pkg).__all__:
      assert f"| `{name}" in text, (pkg, name)
