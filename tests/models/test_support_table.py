"""The committed support table is what the registry says now."""

from tailorkit.models.registry import FAMILIES
from tailorkit.models.support import DOCS_FILE, support_table


def test_committed_support_table_is_up_to_date():
    assert DOCS_FILE.is_file(), f"{DOCS_FILE} is missing; run python -m tailorkit.models.support"
    assert DOCS_FILE.read_text() == support_table(), "stale table: run python -m tailorkit.models.support"


def test_table_has_one_row_per_family():
    rows = [line for line in support_table().splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip(" `") for r in rows] == list(FAMILIES)
    assert "structure-tested, no real weights" in dict(zip(FAMILIES, rows))["minicpmv"]
