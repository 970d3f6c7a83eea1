"""The committed support table is what the registry says now."""

from pathlib import Path

from tailorkit.models.registry import FAMILIES
from tailorkit.models.support import main, support_table

DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "model_families.md"
REGENERATE = "python -m tailorkit.models.support --output docs/model_families.md"


def test_committed_support_table_is_up_to_date():
    assert DOCS_FILE.is_file(), f"{DOCS_FILE} is missing; run {REGENERATE}"
    assert DOCS_FILE.read_text() == support_table(), f"stale table: run {REGENERATE}"


def test_cli_prints_the_table_or_writes_it(tmp_path, capsys):
    main([])
    assert capsys.readouterr().out == support_table()
    main(["--output", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text() == support_table()


def test_table_has_one_row_per_family():
    rows = [line for line in support_table().splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip(" `") for r in rows] == list(FAMILIES)
    assert "structure-tested, no real weights" in dict(zip(FAMILIES, rows))["minicpmv"]
