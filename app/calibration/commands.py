"""The calibration commands behind `gpuplan calibrate`, `calibrate-matrix`, `accuracy` and `import-calibrations`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.plan import TrainingPlan
from app.errors import InputError
from app.settings import Settings

if TYPE_CHECKING:
    from app.calibration.measurement import Loop
    from app.store import Store
    from app.store.models import MeasurementRecord

ACCURACY_INTRO = (
    "Every row is a real training step (2 optimizer steps) of the stated plan on a randomly initialised model of "
    "the stated family, measured by the CPU live-tensor tracker (device cpu) or `torch.cuda.max_memory_allocated` "
    "(device cuda), held against `estimate()` for exactly the same config and plan with the current estimator. "
    "Error = (estimated - measured) / measured. Points are split by a hash of their id: *tune* points could be "
    "looked at while the estimator's formulas were corrected; *holdout* points were not."
)


def model_config(name: str, settings: Settings) -> tuple[str, dict[str, Any]]:
    """(model id, config dict) for a catalog id, a local config.json or a Hub id."""
    from app import catalog
    from app.resolver import _read_local, classify

    kind = classify(name, allow_files=True)
    if kind == "catalog":
        entry = catalog.load_entry(name)
        assert entry is not None
        return entry.id, entry.effective_config
    if kind == "file":
        return str(Path(name).expanduser()), _read_local(name)
    from app.hub.client import fetch_config_sync
    from app.hub.ids import parse_model_ref

    ref = parse_model_ref(name)
    return ref.repo_id, fetch_config_sync(settings, ref).config


def re_estimate(record: MeasurementRecord) -> MeasurementRecord:
    """The record with its estimate (and time model) recomputed by the current estimator for the same config and plan."""
    from app.calibration.timing import record_timing
    from app.core.estimate import estimate
    from app.inventory.cache import cached_spec

    spec = cached_spec(record.config, model_id=record.model_id, source="file", cache_dir=None)
    est = estimate(spec, TrainingPlan.model_validate(record.plan))
    return record.model_copy(
        update={"estimated_peak_bytes": est.room_peak_bytes, "timing": record_timing(record, spec)}
    )


def fp32_matmuls(matmuls: str, device: str) -> bool:
    """Whether a run computes cpu 16-bit matmuls through fp32: 'auto' does when this CPU's bf16 GEMM is slow."""
    if device != "cpu" or matmuls == "native":
        return False
    if matmuls == "fp32":
        return True
    from app.calibration.matmul import slow_16bit_matmuls

    return slow_16bit_matmuls()[0]


def calibrate(
    name: str,
    plan: TrainingPlan,
    settings: Settings,
    *,
    layers: int | None,
    steps: int,
    store: bool = True,
    matmuls: str = "native",
    loop: Loop = "plain",
) -> dict[str, Any]:
    """Measure one point, compare it with the estimate, store it; the --json object."""
    from app.calibration.compare import compare_to, spec_for, to_record
    from app.calibration.distributed import measure

    model_id, config = model_config(name, settings)
    fast = fp32_matmuls(matmuls, plan.device)
    measurement = measure(config, plan, layers=layers, steps=steps, fp32_matmuls=fast, loop=loop)
    comparison, est = compare_to(measurement, spec_for(measurement, model_id))
    stored_id = None
    if store:
        from app.store import Store

        with Store.from_settings(settings) as db:
            stored_id = db.add_measurement(
                _verified(to_record(measurement, comparison, model_id=model_id, source="cli"))
            )
    return {
        "id": stored_id,
        "model": model_id,
        "layers": measurement.layers,
        "device": measurement.device,
        "measured_peak_bytes": comparison.measured_peak_bytes,
        "measured_reserved_bytes": measurement.peak_reserved_bytes,
        "estimated_peak_bytes": comparison.estimated_peak_bytes,
        "error_pct": round(comparison.error_pct, 3),
        "phases": [p.model_dump(mode="json") for p in comparison.phases],
        "ranks": [{"rank": r.rank, "peak_allocated_bytes": r.peak_allocated_bytes} for r in measurement.ranks],
        # offload counted by placement (FSDP2's, checkpoint_offload's): the host RAM peak and the estimate's
        "host_peak_bytes": measurement.host_peak_bytes,
        "estimated_offloaded_bytes": est.offloaded_bytes,
        "env": measurement.env.model_dump(mode="json"),
        "duration_s": round(measurement.duration_s, 2),
    }


def calibrate_matrix(
    spec_path: Path,
    settings: Settings,
    *,
    report: Path | None,
    family: str | None,
    limit: int | None,
    store: bool,
    source: str,
    device: str | None = None,
    matmuls: str = "native",
    resume: bool = True,
    runner: Callable[..., Iterator[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run a matrix spec with progress on stderr; each point goes to the JSONL report (fsynced) and the store
    as soon as it is measured, so a crash loses at most the point being measured.

    With `resume` (the default) a rerun skips the points already done: those stored under `source` with
    the same family and plan, and those in the report already (which are stored now if the store lacks
    them). `runner` is `app.calibration.matrix.run_points` unless a test passes another.
    """
    from app.calibration.matrix import expand, jsonl_line, load_spec, run_points

    spec = load_spec(spec_path)
    if device is not None:  # e.g. try the GPU spec on the CPU reference first
        spec = spec.model_copy(update={"defaults": {**spec.defaults, "device": device}})
    points = [p for p in expand(spec) if family is None or p.family == family][: limit or None]
    if not points:
        raise InputError(f"{spec_path} has no points{' for family ' + family if family else ''}")
    report = report or Path("artifacts") / f"calibration-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl"
    report.parent.mkdir(parents=True, exist_ok=True)
    with _maybe_store(settings, store) as db:
        done = _points_done(report, db, source) if resume else set()
        todo = [p for p in points if _point_key(p.family, p.plan.model_dump(mode="json")) not in done]
        if len(todo) < len(points):
            sys.stderr.write(f"resuming: {len(points) - len(todo)} of {len(points)} points already done\n")
        rows: list[dict[str, Any]] = []
        with report.open("a" if resume else "w") as fh:
            fast = fp32_matmuls(matmuls, points[0].plan.device)
            run = runner or run_points
            for result in run(todo, steps=spec.steps, progress=_progress, fp32_matmuls=fast, loop=spec.loop):
                line = jsonl_line(result)
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                if db is not None:
                    db.add_new([_verified(_report_record(json.loads(line), source))])
                rows.append(json.loads(line))
    return rows


def _progress(n: int, total: int, result: Any) -> None:
    bar = "#" * (20 * n // total)
    sys.stderr.write(f"\r[{bar:<20}] {n}/{total} {result.point.id} error {result.comparison.error_pct:+.2f} %   ")
    if n == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


@contextmanager
def _maybe_store(settings: Settings, store: bool) -> Iterator[Store | None]:
    if not store:
        yield None
        return
    from app.store import Store

    with Store.from_settings(settings) as db:
        yield db


def _point_key(family: str, plan: dict[str, Any]) -> tuple[str, str]:
    """(family, canonical plan), the plan re-read so that a report written before a plan field existed matches."""
    from app.store.models import canonical_json

    with suppress(ValueError):  # not a plan this version reads: its key can match nothing measured now
        plan = TrainingPlan.model_validate(plan).model_dump(mode="json")
    return family, canonical_json(plan)


def _points_done(report: Path, db: Store | None, source: str) -> set[tuple[str, str]]:
    """(family, plan) of the points measured already: stored under `source`, or in the report (then stored)."""
    done: set[tuple[str, str]] = set()
    if db is not None:
        done = {_point_key(r.model_id, r.plan) for r in db.list_measurements(source=source, limit=10_000)}
    if not report.is_file():
        return done
    lines = [line for line in report.read_text().splitlines() if line.strip()]
    recovered = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            key = _point_key(row["family"], row["measurement"]["plan"])
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(f"{report}:{n}: not a complete report line (a crash while writing it?): re-measured\n")
            continue
        if key not in done and db is not None:
            recovered.append(_verified(_report_record(row, source)))
        done.add(key)
    if recovered and db is not None:
        db.add_new(recovered)
    return done


def _verified(record: MeasurementRecord) -> MeasurementRecord:
    """The operator's own runs and imports are verified (uploads over HTTP are not, until accepted)."""
    return record.model_copy(update={"verified": True})


def _report_record(row: dict[str, Any], source: str | None) -> MeasurementRecord:
    """The store's record of one calibrate-matrix / GPU-script report line, compared with the current estimate."""
    from app.calibration.compare import compare_to, spec_for, to_record
    from app.calibration.measurement import Measurement

    measurement = Measurement.model_validate(row["measurement"])
    family = row.get("family", "calibration")
    comparison, _ = compare_to(measurement, spec_for(measurement, family))
    return to_record(
        measurement, comparison, model_id=family, source=source or row.get("source", "import"), split=row.get("split")
    )


def accuracy(settings: Settings, *, device: str | None, source: str | None, write: Path | None) -> str:
    """The accuracy table of stored points, re-estimated with the current estimator."""
    from app.calibration.report import ACCURACY_TITLE, accuracy_markdown
    from app.store import Store
    from app.store.seed import seed_store

    with Store.from_settings(settings) as db:
        seed_store(db)  # a fresh store starts from the measurements gpuplan ships, as `gpuplan serve` does
        records = db.list_measurements(device=device, source=source, limit=10_000)
    text = accuracy_markdown([re_estimate(r) for r in records], title=ACCURACY_TITLE, intro=ACCURACY_INTRO)
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text)
    return text


def import_calibrations(path: Path, settings: Settings, *, source: str | None, verified: bool = True) -> int:
    """Load measurements (a store export, or a calibrate-matrix / GPU-script JSONL report) into the store.

    Runs already stored (same fingerprint) are skipped, so importing a file twice adds nothing the second
    time; rows go in IMPORT_BATCH per transaction. The operator's imports are verified unless `verified=False`.
    """
    from app.store import Store

    if not path.is_file():
        raise InputError(f"no file at {path}")
    lines = path.read_text().splitlines()
    first = next((line for line in lines if line.strip()), "")
    with Store.from_settings(settings) as db:
        if '"measurement"' not in first:
            return db.import_jsonl(path, source=source, verified=verified)
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = _report_record(json.loads(line), source)
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{n} is not a calibration report line: {exc}") from exc
            records.append(record.model_copy(update={"verified": verified}))
        return db.add_new(records)


def accept_calibrations(settings: Settings, *, source: str) -> int:
    """Mark the uploaded (unverified) runs of `source` verified: from now on they count in the quoted accuracy."""
    from app.store import Store

    with Store.from_settings(settings) as db:
        return db.accept(source)
