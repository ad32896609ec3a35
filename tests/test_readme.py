"""The README's custom store example is the code in ``examples/custom_store``, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "custom_store"


def readme_section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of any level."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#+ |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match is not None, f"README.md has no {heading!r} section"
    return match.group(1)


def python_blocks(markdown: str) -> list[str]:
    """The contents of the ```python fenced blocks in ``markdown``, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)


def test_the_custom_store_example_in_the_readme_is_the_example_code() -> None:
    blocks = python_blocks(readme_section("### Writing your own store"))
    files = [EXAMPLE / "test_dict_store.py", EXAMPLE / "dict_store.py"]
    assert blocks == [path.read_text(encoding="utf-8") for path in files]
