"""Opening the store: bad URLs and missing drivers are StoreErrors that say what to do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.errors import StoreError
from app.settings import Settings
from app.store import Store
from app.store.engine import parse_url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", r"is not a database URL: use sqlite:///"),
        ("oracle+nothing://scott@db/x", r"unknown database kind 'oracle\+nothing'"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        Store.open(url)


def test_credentials_are_not_echoed() -> None:
    with pytest.raises(StoreError) as info:
        Store.open("nonsense:hunter2@somewhere")
    assert "hunter2" not in str(info.value)


def test_unopenable_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError, match=r"cannot open and migrate the database"):
        Store.open(f"sqlite:///{(tmp_path / 'dir.sqlite3').as_posix()}")


def test_postgres_urls_use_psycopg_3() -> None:
    for url in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"):
        assert parse_url(url).drivername == "postgresql+psycopg"


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed")
def test_postgres_without_psycopg_says_what_to_install() -> None:
    with pytest.raises(StoreError, match=r"pip install psycopg\[binary\]") as info:
        Store.open("postgresql+psycopg://gpuplan:s3cret@db.example/gpuplan")
    assert "s3cret" not in str(info.value)


def test_from_settings_uses_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    with Store.from_settings(settings) as store:
        assert store.list_measurements() == []
    assert (tmp_path / "data" / "gpuplan.sqlite3").is_file()
