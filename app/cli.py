"""The `gpuplan` command line: estimate, models, gpus, fetch, compare, inference, report, serve (lazy imports)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from app.errors import GpuplanError, InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gpuplan: error: {message} (see `{self.prog} --help`)\n")


MATMULS_HELP = "cpu 16-bit matmuls: native, fp32 (same bytes, fast on CPUs without bf16 GEMM), auto (fp32 if slow)"


def add_plan_flags(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """The plan flags shared by estimate and calibrate, generated from TrainingPlan (app/plan_input.py)."""
    from app.plan_input import add_plan_flags as generated

    generated(p, exclude)


def plan_from_args(ns: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """A TrainingPlan from `base` (e.g. an imported recipe's plan fields) with the given flags over it."""
    from app.plan_input import build_plan, plan_fields

    flags = {f.name: getattr(ns, f.name) for f in plan_fields() if getattr(ns, f.name, None) is not None}
    return build_plan({**(base or {}), **flags}, naming="flag")


def _add_models_parser(sub: Any) -> None:
    """`gpuplan models` and its catalog filters (app/catalog/search.py)."""
    models = sub.add_parser("models", help="list the bundled catalog (filter by family, size, MoE, release)")
    models.add_argument("--q", help="part of the id, family, model_type or architecture")
    models.add_argument("--family", help="e.g. Qwen3, 'Llama 3', Gemma 3")
    models.add_argument("--min-params", dest="min_params", type=float, help="at least N parameters (e.g. 7e9)")
    models.add_argument("--max-params", dest="max_params", type=float, help="at most N parameters")
    models.add_argument("--since", dest="released_from", help="released in or after YYYY-MM")
    models.add_argument("--until", dest="released_to", help="released in or before YYYY-MM")
    models.add_argument("--moe", action=argparse.BooleanOptionalAction, default=None, help="only MoE (or dense)")
    models.add_argument("--sort", choices=["id", "params", "released", "family"], default="id")
    models.add_argument("--json", action="store_true")


def token_count(text: str) -> int:
    """A token count: 100000000, 100_000_000, 1e8, 100M, 2.5B or 500k."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(text.strip()[-1:].lower(), 1.0)
    number = text.strip()[:-1] if scale != 1.0 else text.strip()
    try:
        value = float(number.replace("_", "")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 100M, 2.5B, 1e9)") from None
    if not 1 <= value <= 1e15:
        raise argparse.ArgumentTypeError(f"{text!r}: give between 1 and 1e15 tokens")
    return round(value)


def run_size(ns: argparse.Namespace) -> Any:
    """The run the time and cost are for: --train-tokens x --epochs (defaults: 100M tokens, 1 epoch)."""
    from pydantic import ValidationError

    from app.core.throughput import RunSize

    given = {k: v for k, v in (("train_tokens", ns.train_tokens), ("epochs", ns.epochs)) if v is not None}
    try:
        return RunSize.model_validate(given)
    except ValidationError as exc:
        detail = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise InputError(detail) from None


def _add_run_flags(est: argparse.ArgumentParser) -> None:
    """What the time and cost are for (not plan fields: the plan does not change with the dataset's size)."""
    est.add_argument(
        "--train-tokens",
        type=token_count,
        metavar="N",
        help="tokens in the training set, for time and cost (e.g. 100M, 2.5B, 1e9; default 100M)",
    )
    est.add_argument("--epochs", type=float, metavar="E", help="passes over the training set (default 1)")


def _add_calibration_parsers(sub: Any) -> None:
    """calibrate, calibrate-matrix, accuracy, import-calibrations and accept-calibrations."""
    cal = sub.add_parser("calibrate", help="measure one real training step, store it, print measured vs estimated")
    cal.add_argument("model", help="catalog id, Hub id or path to config.json (weights are random)")
    add_plan_flags(cal, exclude=("loop",))  # --loop below names the harness's loop, and sft sets the plan's
    cal.add_argument("--layers", type=int, help="truncate depth to N layers (the estimate uses the same depth)")
    cal.add_argument("--steps", type=int, default=2, help="optimizer steps (default 2)")
    cal.add_argument("--no-store", dest="store", action="store_false", help="do not store the measurement")
    cal.add_argument("--matmuls", choices=["auto", "native", "fp32"], default="auto", help=MATMULS_HELP)
    cal.add_argument(
        "--loop",
        dest="harness_loop",
        choices=["plain", "trainer", "sft"],
        default="plain",
        help="plain (forward, backward, step, zero_grad), trainer (the steps through transformers.Trainer) or sft "
        "(through trl.SFTTrainer; the plan's loop is then sft)",
    )
    cal.add_argument(
        "--reshard-after-forward",
        choices=["on", "off"],
        default="on",
        help="fsdp: FSDP2 reshard_after_forward (off = sharding fsdp_grad_op); --gpus N runs N CPU ranks over gloo",
    )
    cal.add_argument("--json", action="store_true")
    mat = sub.add_parser("calibrate-matrix", help="run a calibration matrix spec (TOML), store points, write JSONL")
    mat.add_argument("spec", type=Path, help="e.g. calibration/cpu-matrix.toml")
    mat.add_argument("--report", type=Path, help="JSONL report path (default artifacts/calibration-<time>.jsonl)")
    mat.add_argument("--family", help="only this family of the spec")
    mat.add_argument("--limit", type=int, help="only the first N points")
    mat.add_argument("--source", default="cpu-matrix", help="source label stored with each point")
    mat.add_argument("--device", choices=["cpu", "cuda"], help="override the spec's device (try a GPU spec on cpu)")
    mat.add_argument("--no-store", dest="store", action="store_false", help="do not store the points")
    mat.add_argument("--matmuls", choices=["auto", "native", "fp32"], default="auto", help=MATMULS_HELP)
    mat.add_argument(
        "--fresh",
        dest="resume",
        action="store_false",
        help="measure every point again (default: resume, skipping "
        "points already stored under --source or in --report)",
    )
    acc = sub.add_parser("accuracy", help="table of stored points (re-estimated now) and the error summary")
    acc.add_argument("--device", choices=["cpu", "cuda"])
    acc.add_argument("--source", help="only points of this source")
    acc.add_argument("--write", type=Path, help="also write the Markdown to this file (e.g. docs/accuracy.md)")
    fields = sub.add_parser("recipe-fields", help="every config field the import honours, reports or ignores")
    fields.add_argument("--write", type=Path, help="also write the Markdown to this file (docs/recipe-fields.md)")
    imp = sub.add_parser("import-calibrations", help="load a JSONL of measurements (GPU script output) into the store")
    imp.add_argument("path", type=Path)
    imp.add_argument("--source", help="source label to record (default: from the file)")
    imp.add_argument(
        "--unverified",
        dest="verified",
        action="store_false",
        help="keep the runs out of the quoted accuracy "
        "until `gpuplan accept-calibrations` (default: your own imports are verified)",
    )
    acc_up = sub.add_parser(
        "accept-calibrations", help="verify the uploaded runs of one source, so they count in the quoted accuracy"
    )
    acc_up.add_argument("--source", required=True, help="the source label the uploads carry")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuplan", description="GPU memory planner for fine-tuning LLMs (QLoRA, LoRA, full).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    est = sub.add_parser("estimate", help="estimate the peak memory of a fine-tuning step")
    est.add_argument(
        "model",
        nargs="?",
        help="catalog id, Hub id (org/name[@rev]) or path to config.json (default: the --from files')",
    )
    est.add_argument(
        "--from",
        dest="recipes",
        action="append",
        type=Path,
        metavar="FILE",
        help="a training config you run (axolotl or LLaMA-Factory YAML, TrainingArguments/SFTConfig, "
        "adapter_config.json, BitsAndBytesConfig); repeatable; flags override it",
    )
    add_plan_flags(est)
    _add_run_flags(est)
    est.add_argument(
        "--safe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="judge the fit on the upper end of the uncertainty band from comparable measured runs (default: the "
        "GPUPLAN_SAFE_ANSWER setting)",
    )
    est.add_argument("--json", action="store_true", help="print one JSON object")
    _add_models_parser(sub)
    gpus = sub.add_parser("gpus", help="list GPU tiers and their usable memory")
    gpus.add_argument("--json", action="store_true")
    fetch = sub.add_parser("fetch", help="fetch a model's config from the Hub into the cache")
    fetch.add_argument("model", help="org/name[@revision]")
    fetch.add_argument("--json", action="store_true")
    _add_calibration_parsers(sub)
    _add_inference_parser(sub)
    from app.compare.cli import add_parser as add_compare_parser

    add_compare_parser(sub)
    from app.procurement.cli import add_parser as add_report_parser

    add_report_parser(sub)
    serve = sub.add_parser("serve", help="run the web service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    return parser


def _cmd_estimate(ns: argparse.Namespace) -> int:
    from app.core.estimate import estimate
    from app.core.gpus import recommend
    from app.exports import report
    from app.resolver import resolve_model_sync
    from app.service import load_prices
    from app.settings import get_settings

    stack = getattr(ns, "stack", None) or "transformers-5"
    imported = _import_recipes(ns.recipes, stack, getattr(ns, "method", None)) if ns.recipes else None
    run = run_size(ns)
    plan = plan_from_args(ns, imported.plan_fields if imported else None)
    name = ns.model or (imported.model if imported else None)
    if not name:
        raise InputError("name a model: MODEL, or a --from file that names one (base_model, model_name_or_path)")
    settings = get_settings()
    model = resolve_model_sync(name, settings)
    est = estimate(model, plan)
    safe = settings.safe_answer if ns.safe is None else ns.safe
    band, factor = _cli_band(model, est, settings) if safe else (None, 1.0)
    rec = (
        recommend(model, est, settings.headroom, prices=load_prices(settings), run=run, safety_factor=factor)
        if plan.device == "cuda"
        else None
    )
    rec = _cli_times(model, est, rec, settings)
    if ns.json:
        out = report.payload(model, est, rec, band)
        if imported is not None:
            out["recipe"] = imported.model_dump(mode="json", exclude={"plan", "plan_fields"})
        print(json.dumps(out, indent=2))
    else:
        print(report.table(model, est, rec, band))
        if imported is not None:
            from app.recipes.result import summary_lines

            print("\n" + "\n".join(summary_lines(imported)))
    return 0


def _cli_band(model: Any, est: Any, settings: Any) -> tuple[Any, float]:
    """--safe: the band from the settings' store (seeded as `gpuplan serve` seeds it) and its safety factor."""
    from app.http.band import band_for, safety_factor
    from app.service import Planned
    from app.store import Store
    from app.store.seed import seed_store

    with Store.from_settings(settings) as store:
        seed_store(store)
        _, band, _ = band_for(store, Planned(model=model, estimate=est, recommendation=None))
    return band, safety_factor(band, True)


def _cli_times(model: Any, est: Any, rec: Any, settings: Any) -> Any:
    """Each tier's time model against the measured step times of the settings' store, when it has one (a SQLite
    file not created yet has none: `gpuplan estimate` creates no store)."""
    from app.http.timing import timed_records, with_measured_times
    from app.service import Planned
    from app.store import Store

    if rec is None or (settings.database_url is None and not (settings.data_dir / "gpuplan.sqlite3").is_file()):
        return rec
    planned = Planned(model=model, estimate=est, recommendation=rec)
    with Store.from_settings(settings) as store:
        records, _ = timed_records(store, planned)
    return with_measured_times(planned, records).recommendation


def _import_recipes(paths: list[Path], stack: Any, method: Any) -> Any:
    """The --from files, read and imported with `--stack`'s defaults and `--method` over theirs (a missing or
    unreadable file is one InputError line)."""
    from app.recipes import RecipeFile, import_recipe

    files = []
    for path in paths:
        try:
            files.append(RecipeFile.from_bytes(path.name, path.read_bytes()))
        except OSError as exc:
            raise InputError(f"--from {path}: cannot read it ({exc.strerror or exc})") from None
    return import_recipe(files, stack, method)


def _cmd_models(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.catalog.search import CatalogQuery, find_models

    fields = ("q", "family", "min_params", "max_params", "released_from", "released_to", "moe", "sort")
    given = {k: getattr(ns, k) for k in fields if getattr(ns, k) is not None}
    given.update({k: int(given[k]) for k in ("min_params", "max_params") if k in given})
    try:
        rows = find_models(CatalogQuery(**given))
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = {"released_from": "--since", "released_to": "--until"}.get(str(first["loc"][0]), str(first["loc"][0]))
        month = first["type"] == "string_pattern_mismatch"
        raise InputError(f"{flag}: {'give a month as YYYY-MM, e.g. 2025-01' if month else first['msg']}") from None
    if ns.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return 0
    print(f"{'id':<48} {'family':<12} {'released':<8} {'type':<12} {'parameters':>17} {'experts':>7}")
    for r in rows:
        experts = str(r.num_experts) if r.num_experts else "-"
        print(f"{r.id:<48} {r.family:<12} {r.released:<8} {r.model_type:<12} {r.num_params:>17,} {experts:>7}")
    return 0


def _cmd_gpus(ns: argparse.Namespace) -> int:
    from app.core.gpus import GPU_TIERS

    if ns.json:
        print(json.dumps([t.model_dump(mode="json") for t in GPU_TIERS], indent=2))
    else:
        print(
            f"{'gpu':<18} {'segment':<12} {'memory':>7} {'usable bytes':>16}  {'arch':<22} {'cc':>6} {'bf16':>4} "
            f"{'fa2':>4} {'16-bit TF':>9} {'GB/s':>6}  interconnect"
        )
        for t in GPU_TIERS:
            print(
                f"{t.name:<18} {t.segment:<12} {t.memory_gb:>4} GB {t.usable_bytes:>16,}  {t.architecture:<22} "
                f"{t.compute_capability:>6} {'yes' if t.bf16 else 'no':>4} {'yes' if t.flash_attention_2 else 'no':>4} "
                f"{t.dense_16bit_tflops:>9,.1f} {t.memory_bandwidth_gbs:>6,.0f}  {t.interconnect}"
            )
    return 0


def _cmd_fetch(ns: argparse.Namespace) -> int:
    from app.hub.client import fetch_config_sync
    from app.hub.ids import parse_model_ref
    from app.resolver import resolve_model_sync
    from app.settings import get_settings

    settings = get_settings()
    ref = parse_model_ref(ns.model)
    fetched = fetch_config_sync(settings, ref)
    spec = resolve_model_sync(ns.model, settings, allow_files=False)
    out = {
        "id": ref.repo_id,
        "revision": ref.revision,
        "sha": fetched.sha,
        "architecture": spec.arch.architecture,
        "model_type": spec.arch.model_type,
        "num_params": spec.num_params,
        "hub_params": fetched.safetensors_total,
        "from_cache": fetched.from_cache,
    }
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['id']} @ {out['sha'] or '(no sha)'}: {out['architecture']} ({out['model_type']}), {out['num_params']:,} parameters"
            + (f"; Hub says {out['hub_params']:,}" if out["hub_params"] else "")
        )
    return 0


def _cmd_calibrate(ns: argparse.Namespace) -> int:
    from app.calibration.commands import calibrate, model_config
    from app.calibration.distributed import with_reshard
    from app.calibration.progress import expected_seconds, stderr_progress
    from app.settings import get_settings

    sft = {"loop": "sft"} if ns.harness_loop == "sft" else {}  # SFTTrainer's fused LM head is the plan's loop sft
    plan, settings = with_reshard(plan_from_args(ns, sft), ns.reshard_after_forward), get_settings()
    on_cpu = plan.device == "cpu"
    expected = expected_seconds(model_config(ns.model, settings)[1], plan, ns.layers, ns.steps) if on_cpu else None
    with stderr_progress(expected):
        out = calibrate(
            ns.model,
            plan,
            settings,
            layers=ns.layers,
            steps=ns.steps,
            store=ns.store,
            matmuls=ns.matmuls,
            loop=ns.harness_loop,
        )
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['model']} ({out['layers']} layers, {out['device']}): measured {out['measured_peak_bytes']:,} B, "
            f"estimated {out['estimated_peak_bytes']:,} B, error {out['error_pct']:+.2f} %"
            + (f" (stored as #{out['id']})" if out["id"] else "")
        )
    return 0


def _cmd_calibrate_matrix(ns: argparse.Namespace) -> int:
    import statistics

    from app.calibration.commands import calibrate_matrix
    from app.settings import get_settings

    rows = calibrate_matrix(
        ns.spec,
        get_settings(),
        report=ns.report,
        family=ns.family,
        limit=ns.limit,
        store=ns.store,
        source=ns.source,
        device=ns.device,
        matmuls=ns.matmuls,
        resume=ns.resume,
    )
    if not rows:
        print("0 points measured: every point of the spec was done already (--fresh measures them again)")
        return 0
    errors = sorted(abs(r["error_pct"]) for r in rows)
    print(f"{len(rows)} points: median |error| {statistics.median(errors):.2f} %, max {errors[-1]:.2f} %")
    return 0


def _cmd_accuracy(ns: argparse.Namespace) -> int:
    from app.calibration.commands import accuracy
    from app.settings import get_settings

    print(accuracy(get_settings(), device=ns.device, source=ns.source, write=ns.write), end="")
    return 0


def _cmd_recipe_fields(ns: argparse.Namespace) -> int:
    from app.recipes.fields import fields_markdown

    text = fields_markdown()
    if ns.write is not None:
        ns.write.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


def _cmd_import(ns: argparse.Namespace) -> int:
    from app.calibration.commands import import_calibrations
    from app.settings import get_settings

    added = import_calibrations(ns.path, get_settings(), source=ns.source, verified=ns.verified)
    print(f"imported {added} measurements (runs already stored are skipped)")
    return 0


def _cmd_accept(ns: argparse.Namespace) -> int:
    from app.calibration.commands import accept_calibrations
    from app.settings import get_settings

    print(f"accepted {accept_calibrations(get_settings(), source=ns.source)} runs of source {ns.source!r}")
    return 0


def _cmd_serve(ns: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=ns.host, port=ns.port, workers=ns.workers)
    return 0


def _add_inference_parser(sub: Any) -> None:
    from app.serving.cli import add_parser

    add_parser(sub)


def _cmd_compare(ns: argparse.Namespace) -> int:
    from app.compare.cli import run
    from app.web.pdf import comparison_pdf_bytes

    return run(ns, pdf=comparison_pdf_bytes)


def _cmd_report(ns: argparse.Namespace) -> int:
    from app.procurement.cli import run
    from app.web.pdf import procurement_pdf_bytes

    return run(ns, pdf=procurement_pdf_bytes)


def _cmd_inference(ns: argparse.Namespace) -> int:
    from app.serving.cli import run

    return run(ns)


COMMANDS = {
    "estimate": _cmd_estimate,
    "models": _cmd_models,
    "gpus": _cmd_gpus,
    "fetch": _cmd_fetch,
    "calibrate": _cmd_calibrate,
    "calibrate-matrix": _cmd_calibrate_matrix,
    "accuracy": _cmd_accuracy,
    "recipe-fields": _cmd_recipe_fields,
    "import-calibrations": _cmd_import,
    "accept-calibrations": _cmd_accept,
    "serve": _cmd_serve,
    "inference": _cmd_inference,
    "compare": _cmd_compare,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one line (or --help)
        return int(exc.code or 0)
    try:
        code = COMMANDS[ns.command](ns)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except GpuplanError as exc:
        code = 2 if isinstance(exc, InputError) else 1
        print(f"gpuplan: {exc.title.lower()}: {exc.detail}", file=sys.stderr)
        return code
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of stdout went away (`gpuplan gpus --json | head`): stop quietly, as Python's docs advise.

    https://docs.python.org/3/library/signal.html#note-on-sigpipe: point stdout at devnull so the final
    flush at exit cannot raise again, and exit 1.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
