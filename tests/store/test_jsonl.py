"""JSON Lines export and import: round trip, de-duplication, source override, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InputError, StoreError
from app.store import Store

from .conftest import MakeRecord


def test_export_import_round_trip(tmp_path: Path, store: Store, make_record: MakeRecord) -> None:
    originals = [
        make_record(minutes=1, device="cuda", split="tune", source="gpu-h200"),
        make_record(minutes=0, model_id="Qwen/Qwen2.5-0.5B", model_type="qwen2", split="holdout"),
        make_record(minutes=2, method="full", layers=None, phases=[], env={}),
    ]
    store.add_many(originals)
    path = tmp_path / "out" / "measurements.jsonl"
    assert store.export_jsonl(path) == 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["model_id"] for line in lines] == [rec.model_id for rec in originals]  # oldest id first
    assert json.loads(lines[0])["error_pct"] == 10.0

    with Store.open(f"sqlite:///{(tmp_path / 'other.sqlite3').as_posix()}") as other:
        assert other.import_jsonl(path) == 3
        assert [rec.model_copy(update={"id": None}) for rec in other.list_measurements()] == [
            rec.model_copy(update={"id": None}) for rec in store.list_measurements()
        ]
        assert other.accuracy() == store.accuracy()


def test_import_twice_adds_nothing_and_source_can_be_replaced(
    tmp_path: Path, store: Store, make_record: MakeRecord
) -> None:
    store.add_many([make_record(minutes=i) for i in range(3)])
    path = tmp_path / "gpu.jsonl"
    store.export_jsonl(path)
    with Store.open(f"sqlite:///{(tmp_path / 'web.sqlite3').as_posix()}") as web:
        assert web.import_jsonl(path, source="gpu-h200") == 3
        assert web.import_jsonl(path, source="gpu-h200") == 0
        assert web.import_jsonl(path) == 0  # same runs, other label: still the same runs
        assert {rec.source for rec in web.list_measurements()} == {"gpu-h200"}
    # duplicates inside one file are added once
    path.write_text(path.read_text() * 2)
    with Store.open(f"sqlite:///{(tmp_path / 'dup.sqlite3').as_posix()}") as dup:
        assert dup.import_jsonl(path) == 3


def test_export_of_one_source(tmp_path: Path, store: Store, make_record: MakeRecord) -> None:
    store.add_many([make_record(minutes=0, source="upload"), make_record(minutes=1, source="gpu-h200")])
    assert store.export_jsonl(tmp_path / "gpu.jsonl", source="gpu-h200") == 1
    assert json.loads((tmp_path / "gpu.jsonl").read_text())["source"] == "gpu-h200"
    assert store.export_jsonl(tmp_path / "none.jsonl", source="nowhere") == 0
    assert (tmp_path / "none.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"bad\.jsonl:2: not JSON"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object, got list"),
        ('{"model_id": "x"}', r"bad\.jsonl:2: not a measurement: created_at: Field required"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_added(
    tmp_path: Path, store: Store, make_record: MakeRecord, content: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(make_record().model_dump_json() + "\n" + content + "\n")
    with pytest.raises(InputError, match=message):
        store.import_jsonl(path)
    assert store.list_measurements() == []


def test_missing_file_and_unwritable_target(tmp_path: Path, store: Store) -> None:
    with pytest.raises(InputError, match="cannot read"):
        store.import_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(StoreError, match="cannot write"):
        store.export_jsonl(tmp_path / "a_file" / "out.jsonl")
