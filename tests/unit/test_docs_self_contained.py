"""The repository stands on its own: README.md and docs/*.md name no file outside it.

A reader of a clone (or of the package's README) has only the repository; a mention of a file
beside it (`../shared/…`) or of a page that is not in it is a dead end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PAGE = re.compile(r"[\w./-]*[\w-]+\.md\b")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _inside(doc: Path, name: str) -> bool:
    """Whether `name`, as the doc means it (beside the doc, from the root, or in docs/), is a
    file of the repository."""
    for base in (doc.parent, ROOT, ROOT / "docs"):
        path = (base / name).resolve()
        if path.is_file() and path.is_relative_to(ROOT):
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_page_named_is_in_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    outside = [name for name in _PAGE.findall(text) if not _inside(doc, name)]
    assert outside == [], f"{doc.name} names pages that are not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_link_is_in_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    links = [t for t in _LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    outside = [target for target in links if not _inside(doc, target)]
    assert outside == [], f"{doc.name} links to files that are not in the repository"


def test_no_path_leaves_the_repository() -> None:
    leaving = [
        f"{doc.name}: {match}"
        for doc in DOCS
        for match in re.findall(r"\.\./[\w./-]+", doc.read_text(encoding="utf-8"))
        if not (doc.parent / match).resolve().is_relative_to(ROOT)
    ]
    assert leaving == []
