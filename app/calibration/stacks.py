"""Measure a plan on the software stack it names: in this process when that stack is installed here, else in the
stack's own virtualenv (a child `python -m app.calibration.stacks` that reads the job on stdin and writes the
Measurement as JSON on stdout).

`calibration/stack-transformers-4.sh` makes that virtualenv (`.venv-tf4`, from `calibration/stack-transformers-4.txt`);
the setting `stack4_python` (GPUPLAN_STACK4_PYTHON) points elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.calibration.measurement import Loop, Measurement
from app.core.plan import Stack, TrainingPlan
from app.errors import CalibrationError

CHILD_TIMEOUT_S = 1800.0
ROOT = Path(__file__).resolve().parents[2]  # the checkout: the child imports this same app


@lru_cache(maxsize=1)
def installed_stack() -> Stack:
    """The stack this process runs: transformers' major version."""
    from importlib import metadata

    return "transformers-4" if metadata.version("transformers").startswith("4.") else "transformers-5"


def stack_python(stack: Stack) -> Path:
    """The python of `stack`'s virtualenv, or a CalibrationError that says how to make one."""
    if stack != "transformers-4":
        raise CalibrationError(f"stack {stack} is the main virtualenv's: run gpuplan from it")
    from app.settings import get_settings

    python = get_settings().stack4_python
    if not python.is_absolute():
        python = ROOT / python
    if not python.exists():
        raise CalibrationError(
            f"stack transformers-4 needs its own virtualenv ({python} not found): run "
            "`bash calibration/stack-transformers-4.sh`, or set GPUPLAN_STACK4_PYTHON to its python"
        )
    return python


def measure_on_stack(job: dict[str, Any], plan: TrainingPlan) -> Measurement:
    """Run `job` (measure()'s arguments) in the virtualenv of `plan.stack`; a failed run's stderr tail is shown."""
    python = stack_python(plan.stack)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [str(python), "-m", "app.calibration.stacks"],
            input=json.dumps({**job, "plan": plan.model_dump(mode="json")}),
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CalibrationError(f"the {plan.stack} run took over {CHILD_TIMEOUT_S:.0f} s: use fewer layers") from exc
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CalibrationError(f"the {plan.stack} run failed ({python}): {last}")
    return Measurement.model_validate_json(done.stdout.strip().splitlines()[-1])


def _child() -> None:
    from app.calibration.distributed import measure

    job = json.load(sys.stdin)
    plan = TrainingPlan.model_validate(job.pop("plan"))
    loop: Loop = job.pop("loop", "plain")
    measurement = measure(plan=plan, loop=loop, **job)
    sys.stdout.write(measurement.model_dump_json() + "\n")


if __name__ == "__main__":
    try:
        _child()
    except CalibrationError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
