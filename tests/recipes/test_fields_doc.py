"""docs/recipe-fields.md is the importer's own tables, rendered: every field honoured, reported or ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.recipes import FORMATS, import_recipe
from app.recipes.fields import field_rows, fields_markdown
from app.recipes.formats import Format
from tests.recipes.helpers import mapped, not_modelled, recipe

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipe-fields.md"


def test_the_doc_is_what_the_tables_render() -> None:
    assert DOC.read_text(encoding="utf-8") == fields_markdown(), (
        "run: gpuplan recipe-fields --write docs/recipe-fields.md"
    )


def test_the_cli_prints_and_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fields.md"
    assert main(["recipe-fields", "--write", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == capsys.readouterr().out == fields_markdown()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=lambda f: f.name)
def test_every_table_field_has_one_row_and_the_counts_add_up(fmt: Format) -> None:
    rows = list(field_rows(fmt.fields))
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    section = fields_markdown().split(f"(`{fmt.name}`)")[1]
    assert f"{len(rows)} fields: " in section.splitlines()[2]


def test_what_the_doc_says_is_what_an_import_does() -> None:
    """One honoured and one not-modelled row of axolotl's table, held against a real import."""
    rows = {r.name: r for r in field_rows(FORMATS["axolotl"].fields)}
    assert rows["lora_r"].kind == "honoured" and "`rank`" in rows["lora_r"].detail
    assert rows["torch_compile"].kind == "not modelled"
    text = "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nlora_r: 32\ntorch_compile: true\nlogging_steps: 5\n"
    result = import_recipe([recipe("a.yml", text)])
    assert mapped(result)[("lora_r", "rank")] == 32
    assert "torch_compile" in not_modelled(result)
    assert rows["logging_steps"].kind == "ignored"
    assert "logging_steps" in {f.field for f in result.ignored}
