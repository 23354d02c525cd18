"""The docs stay true to the code: README.md stays a map (under 12 KB), and every link into
docs/ resolves."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_a_map_under_12_kb():
    size = len((ROOT / "README.md").read_bytes())
    assert size < 12 * 1024, f"README.md is {size} bytes; move reference text into docs/ and link to it"


def test_every_link_into_the_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    readme_links = LINK.findall((ROOT / "README.md").read_text())
    assert any(link.startswith("docs/") for link in readme_links), "README.md links to no page of docs/"
    broken = [f"{page.relative_to(ROOT)}: {link}" for page in pages for link in LINK.findall(page.read_text())
              if "://" not in link and not (page.parent / link).is_file()]
    assert not broken, f"links to files that do not exist: {broken}"
