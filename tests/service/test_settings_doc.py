"""docs/service.md's settings table is generated from the Settings field descriptions: it must not drift."""

from __future__ import annotations

from pathlib import Path

from captioner.service.settings import (
    SETTINGS_TABLE_BEGIN,
    SETTINGS_TABLE_END,
    Settings,
    env_name,
    settings_table,
    update_settings_doc,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def test_every_setting_has_a_description():
    assert [name for name, f in Settings.model_fields.items() if not (f.description or "").strip()] == []


def test_the_documented_table_is_the_generated_one():
    text = DOC.read_text()
    table = text[
        text.index(SETTINGS_TABLE_BEGIN) + len(SETTINGS_TABLE_BEGIN) : text.index(SETTINGS_TABLE_END)
    ]
    assert table.strip() == settings_table(), (
        "docs/service.md's settings table is out of date: run python -m captioner.service.settings --update "
        "docs/service.md"
    )


def test_the_table_names_every_variable_once_with_its_default(tmp_path):
    table = settings_table()
    for name in Settings.model_fields:
        assert table.count(f"| `{env_name(name)}` |") == 1, name
    assert (
        "| `MODEL_PATH` | unset |" in table
        and "| `CAPTIONER_MAX_UPLOAD_BYTES` | `10485760` (10 MiB) |" in table
    )
    stale = tmp_path / "service.md"
    stale.write_text(f"intro\n{SETTINGS_TABLE_BEGIN}\n| old |\n{SETTINGS_TABLE_END}\nafter\n")
    assert update_settings_doc(stale) and not update_settings_doc(stale)
    assert stale.read_text().startswith("intro\n") and stale.read_text().endswith("after\n")
