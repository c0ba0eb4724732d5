"""Docs that are generated from the code must match it."""
from pathlib import Path

from prunetax.enumerate.docgen import render

ROOT = Path(__file__).resolve().parents[1]


def test_taxonomy_doc_matches_registries():
    assert (ROOT / "docs" / "taxonomy.md").read_text() == render(), \
        "docs/taxonomy.md is stale: run `python -m prunetax.enumerate.docgen > docs/taxonomy.md`"
