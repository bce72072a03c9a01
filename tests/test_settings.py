"""Every setting is documented in the README's configuration table and read from its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_setting_is_in_the_readme_table(name: str) -> None:
    field = Settings.model_fields[name]
    assert field.description, f"{name} needs a description"
    rows = [line for line in README.splitlines() if line.startswith("|") and f"(`{name}`)" in line]
    assert rows, f"README configuration table lacks `{name}`"


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUPLAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.data_dir == tmp_path and s.hf_hub_offline and s.hf_token == "hf_x"
    assert s.sqlite_url == "postgresql+psycopg://u@h/db"
    assert "hf_x" not in repr(s)
