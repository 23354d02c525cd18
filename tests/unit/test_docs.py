"""The docs stay true to the code: the settings table in docs/operations.md is the one the code
declares, README.md stays a map (under 12 KB), and every link into docs/ resolves."""
from __future__ import annotations

import pathlib
import re

from vws.common import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
REGENERATE = ".venv/bin/python -c 'from vws.common import config; print(config.settings_markdown(), end=\"\")'"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _settings_table(text: str) -> str:
    lines = text.splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if line.startswith("<!-- settings: begin"))
    end = next(i for i, line in enumerate(lines) if line.startswith("<!-- settings: end"))
    return "".join(lines[begin + 1:end])


def test_the_settings_table_in_the_docs_is_the_codes():
    assert _settings_table(OPERATIONS.read_text()) == config.settings_markdown(), (
        "docs/operations.md's settings table differs from the settings in services/common/config.py: "
        f"replace the lines between its `<!-- settings: ... -->` markers with the output of {REGENERATE}")


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
