"""The README works where it is read: on GitHub and on a package index page (its long description).

Its python blocks run in tests/test_docs.py, like a docs page. Here: its links reach something from a
package index page too, and what it lists (the docs pages, the examples) is what the checkout has.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINK_TARGET = re.compile(r"\]\((?P<target>[^)\s]*)")  # [text](target) and ![alt](target)


def readme_section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of its level or above."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match is not None, f"README.md has no {heading!r} section"
    return match.group(1)


def test_every_link_is_an_absolute_web_address() -> None:
    """A relative link (``docs/...``, ``examples/...``) or an anchor works on GitHub only: on a
    package index page it leads nowhere. Repository files are named as code instead."""
    prose = re.sub(r"^```.*?^```$", "", README, flags=re.MULTILINE | re.DOTALL)  # code is no link
    prose = re.sub(r"`[^`]*`", "", prose)
    targets = LINK_TARGET.findall(prose)
    assert targets, "the parser found no link: it would check nothing"
    assert [target for target in targets if not target.startswith("https://")] == []


def test_the_documentation_section_lists_every_page_by_title() -> None:
    section = " ".join(readme_section("## Documentation").split())  # a title may wrap
    pages = [*(ROOT / "docs").glob("*.md"), *(ROOT / "docs" / "guides").glob("*.md")]
    # A page's title is its first line; the changelog page only includes CHANGELOG.md, and the
    # index is the site's front page, titled after the project.
    titles = [
        "Changelog" if page.name == "changelog.md" else page.read_text(encoding="utf-8").splitlines()[0][2:]
        for page in pages
        if page.name != "index.md"
    ]
    assert len(titles) > 10
    missing = [title for title in titles if title not in section]
    assert missing == [], "README's Documentation section does not list these docs pages"


def test_the_examples_table_shows_every_example_nox_runs() -> None:
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    examples_dict = re.search(r"^EXAMPLES = \{\n(.*?)^\}", noxfile, re.MULTILINE | re.DOTALL)
    assert examples_dict is not None, "noxfile.py has no EXAMPLES table"
    names = re.findall(r'^\s+"(\w+)":', examples_dict.group(1), re.MULTILINE)
    assert len(names) >= 5
    section = readme_section("## Examples")
    missing = [name for name in names if f"-s example -- {name}`" not in section and name != "memory"]
    assert missing == [], "README's Examples table lacks these nox examples"
    assert "-s example -- memory" in section
