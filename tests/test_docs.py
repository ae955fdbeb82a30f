"""The documents a newcomer meets: a short README, one page per task, links that resolve,
and no history (commit hashes, dates) in the README, the docs or the code."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [
    "training",
    "serving",
    "tuning",
    "export",
    "distributed",
    "architecture",
    "reliability",
    "benchmarks",
    "results",
]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HASH = re.compile(r"\b[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_short_and_every_page_is_there():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    for page in PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces '-'."""
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_a_heading(document):
    text = document.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path) if path else document
        assert linked.exists(), f"{document.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{document.name}: {target}"


def test_no_commit_hash_in_the_documents_or_the_code():
    files = [*DOCUMENTS, *(ROOT / "src").rglob("*.py")]
    for path in files:
        text = path.read_text()
        text = re.sub(r"\b[0-9a-f]{64}\b", "", text)  # SHA-256 checksums of the dataset
        assert not HASH.findall(text), (path, HASH.findall(text))


def test_no_date_in_the_code():
    for path in (ROOT / "src").rglob("*.py"):
        assert not DATE.findall(path.read_text()), path
