"""Calibration: real fine-tuning steps on random-weight models, measured (the tracker is imported lazily)."""

from app.calibration.harness import run_measurement
from app.calibration.measurement import Environment, Measurement, Phase

__all__ = ["Environment", "Measurement", "Phase", "run_measurement"]
