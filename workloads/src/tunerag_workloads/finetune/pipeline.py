"""The FineTuneJob pipeline: validate data -> train -> validate model -> publish -> result.

Layout of the run folder `<output>/runs/<run-id>/` (run id from $TUNERAG_RUN_ID, which the operator
sets to `<namespace>-<name>-g<generation>`):

    data-report.json            the full data report (drops by reason with examples, digests)
    checkpoints/step-N/         adapter + optimizer + scheduler + RNG + data position (state.json last)
    adapter/                    adapter_model.safetensors, adapter_config.json, README.md (model card),
                                manifest.json (sha256 per file, folder sha256, sizes; written last)
    report.json                 everything in the result and more (metrics, gates, timings, loss history)
    report.html                 the same for people: data, loss curves, metrics vs gates, retention,
                                hyper-parameters, lineage; self-contained (inline SVG, no script)

The adapter's final `<family>/<version>/` location is allocated later by the operator's registry.
Nothing is written under adapter/ unless data validation, model loading and training all succeed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from tunerag_workloads.contract import WorkloadError, report_progress
from tunerag_workloads.finetune import distributed, evaluate
from tunerag_workloads.finetune.data import prepare_all
from tunerag_workloads.finetune.publish import MANIFEST, build_manifest, model_card
from tunerag_workloads.finetune.spec import FineTuneSpec, parse_spec
from tunerag_workloads.finetune.storage import Store, retrying
from tunerag_workloads.finetune.train import load_model, load_tokenizer, resolve_model_path, train

EVAL_BATCH = 8
CURVE_ROWS = 128  # validation rows measured (train.VALIDATION_POINTS + 1 times) for the validation-loss curve


def run_id_for(request: dict[str, Any]) -> str:
    env = os.environ.get("TUNERAG_RUN_ID") or request.get("runId")
    if env:
        return str(env)
    if request.get("name"):
        return f"{request.get('namespace', 'default')}-{request['name']}-g{request.get('generation', 0)}"
    return "local"


def hyper_parameters(spec: FineTuneSpec, total_steps: int, notes: dict[str, str]) -> dict[str, str]:
    t, lora = spec.training, spec.method.lora
    hp = {
        "method": spec.method.type, "r": str(lora.r), "alpha": str(lora.alpha), "dropout": str(lora.dropout),
        "targetModules": ",".join(lora.target_modules), "learningRate": str(t.learning_rate),
        "scheduler": t.scheduler, "warmupRatio": str(t.warmup_ratio), "batchSize": str(t.batch_size),
        "gradientAccumulation": str(t.gradient_accumulation), "maxSeqLength": str(t.max_seq_length),
        "packing": str(t.packing).lower(), "seed": str(t.seed), "steps": str(total_steps),
    }
    if spec.method.quantization is not None and spec.method.type == "qlora":
        q = spec.method.quantization
        hp.update({"quantType": q.quant_type, "doubleQuant": str(q.double_quant).lower(), "computeDtype": q.compute_dtype})
    hp.update(notes)
    return hp


def run_pipeline(request: dict[str, Any], work_dir: Path | None = None) -> dict[str, Any]:
    """Runs every stage and returns the result (without "ok"); raises WorkloadError for what the user
    can fix."""
    spec = parse_spec(request.get("spec", request))
    run_id = run_id_for(request)
    started = time.monotonic()
    output = Store(spec.output.uri)
    output.check_writable()
    run = Store(output.uri_of(f"runs/{run_id}"))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp_dir = Path(tmp)

        lead = distributed.world()[0] == 0
        if lead:
            report_progress(phase="ValidatingData")
        model_path = resolve_model_path(spec.base_model.uri, tmp_dir)
        baseline_dir = evaluate.fetch_baseline(spec.gates, tmp_dir)
        tokenizer = load_tokenizer(model_path, spec.base_model.revision)
        data = prepare_all(spec, tokenizer)
        data_reports = {k: r.summary() for k, r in data.reports.items()}
        run.write_json("data-report.json", {k: r.full() for k, r in data.reports.items()})
        if lead:
            report_progress(phase="ValidatingData", dataReport=data.summary())

        loaded = load_model(spec, model_path)
        model, dev = loaded.model, loaded.device
        autocast = loaded.compute_dtype if loaded.compute_dtype != torch.float32 else None
        pad_id = tokenizer.pad_token_id
        t = spec.training
        eval_kw = {"max_len": t.max_seq_length, "batch_size": EVAL_BATCH, "pad_id": pad_id, "autocast": autocast}

        rank = distributed.world()[0]
        if lead:
            report_progress(phase="Training")
        curve_rows = data.validation[:CURVE_ROWS]
        outcome = train(spec, loaded, data.train, run, pad_id,
                        validate=lambda: evaluate.mean_loss(model, curve_rows, dev, **eval_kw))
        distributed.finish()
        if rank != 0:  # rank 0 evaluates and publishes
            return {"rank": rank, "steps": outcome.steps}

        report_progress(phase="Evaluating")
        metrics: dict[str, float | None] = {}
        val_loss = evaluate.mean_loss(model, data.validation, dev, **eval_kw)
        metrics["validationLoss"] = val_loss
        metrics["validationPerplexity"] = evaluate.perplexity(val_loss)
        metrics["exactMatch"] = evaluate.exact_match(model, tokenizer, data.validation, dev)
        with model.disable_adapter():
            metrics["baseValidationLoss"] = evaluate.mean_loss(model, data.validation, dev, **eval_kw)
            metrics["baseExactMatch"] = evaluate.exact_match(model, tokenizer, data.validation, dev)
        if baseline_dir is not None:  # the version now serving, on the same validation rows
            metrics["baselineValidationLoss"] = evaluate.baseline_loss(model, baseline_dir, data.validation, dev, **eval_kw)
            metrics["baselineImprovement"] = evaluate.improvement(val_loss, metrics["baselineValidationLoss"])
        if data.retention:
            adapted = evaluate.mean_loss(model, data.retention, dev, **eval_kw)
            with model.disable_adapter():
                base = evaluate.mean_loss(model, data.retention, dev, **eval_kw)
            metrics["retentionLoss"] = adapted
            metrics["baseRetentionLoss"] = base
            metrics["retentionRegression"] = (adapted - base) / base if base > 0 else math.inf
        metrics["trainLoss"] = outcome.final_loss
        metrics["tokensPerSecond"] = outcome.tokens_per_second
        gates = evaluate.gate_results(spec.gates, metrics)
        verdict = "Validated" if all(g["passed"] for g in gates) else "Rejected"
        # JSON has no inf/nan: a metric that could not be computed is null (its gate already failed).
        rounded = {k: (round(float(v), 6) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}
        report_progress(phase="Evaluating", verdict=verdict, metrics=rounded)

        report_progress(phase="Publishing")
        hyper = hyper_parameters(spec, outcome.total_steps, loaded.notes)
        base_info = {"uri": spec.base_model.uri, "revision": spec.base_model.revision}
        adapter_dir = tmp_dir / "adapter"
        model.save_pretrained(str(adapter_dir))
        config_file = adapter_dir / "adapter_config.json"  # name the base by its URI, not the pod's path
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                           "base_model_name_or_path": spec.base_model.uri}, indent=2))
        (adapter_dir / "README.md").write_text(model_card(
            family=spec.adapter.family, base=base_info, method=spec.method.type, hyper=hyper, data=data_reports,
            metrics=rounded, gates=gates, verdict=verdict, run_id=run_id))
        manifest = build_manifest(adapter_dir)
        (adapter_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        # The manifest goes up last, after every file is checked: its presence means complete. A
        # failing store is retried with backoff (reported as progress); nothing registers the
        # adapter before this returns.
        adapter_uri = retrying("publish the adapter", lambda: run.put_folder(adapter_dir, "adapter", marker=MANIFEST))

        quantized: dict[str, Any] | None = None
        if spec.output.quantize is not None and verdict == "Validated":
            from tunerag_workloads.finetune.quantize import merge_and_quantize

            report_progress(phase="Publishing", event="quantizing", format=spec.output.quantize.format)
            quantized = merge_and_quantize(
                base_path=model_path, adapter_dir=adapter_dir, fmt=spec.output.quantize.format,
                validation=data.validation, max_len=t.max_seq_length, pad_id=pad_id, store=run,
                revision=spec.base_model.revision)

    result: dict[str, Any] = {
        "verdict": verdict,
        "runId": run_id,
        "metrics": rounded,
        "gates": gates,
        "dataReport": data.summary(),
        "datasetDigests": data.digests(),
        "adapter": {"uri": adapter_uri, "sha256": manifest["sha256"], "sizeBytes": manifest["sizeBytes"],
                    "format": "peft-lora"},
        "baseModel": base_info,
        "hyperParameters": hyper,
        "steps": outcome.steps,
        "totalSteps": outcome.total_steps,
        "resumedFromStep": outcome.resumed_from_step,
        "reportUri": run.uri_of("report.html"),
    }
    if quantized is not None:
        result["quantized"] = {k: quantized[k] for k in ("uri", "format", "sha256", "sizeBytes", "fp16SizeBytes", "ratio",
                                                         "relativeLossDelta", "argmaxAgreement", "withinTolerance")}
    full = {**result, "quantizedDetails": quantized, "dataReports": data_reports, "dataReportUri": run.uri_of("data-report.json"),
            "timings": {"trainSeconds": round(outcome.train_seconds, 3), "totalSeconds": round(time.monotonic() - started, 3)},
            "tokens": {"real": outcome.real_tokens, "padded": outcome.padded_tokens},
            "history": {**outcome.history, "validationRows": len(curve_rows), "validationRowsTotal": len(data.validation)},
            "job": {k: request[k] for k in ("namespace", "name", "generation") if k in request},
            "manifest": manifest["files"], "family": spec.adapter.family, "method": spec.method.type,
            "reportJsonUri": run.uri_of("report.json")}
    if not write_html_report(run, full, {k: r.full() for k, r in data.reports.items()}):
        result.pop("reportUri")
        full.pop("reportUri")
    retrying("write report.json", lambda: run.write_json("report.json", full))
    report_progress(phase="Succeeded" if verdict == "Validated" else "Rejected", step=outcome.steps,
                    totalSteps=outcome.total_steps)
    return shrink(result)


def write_html_report(run: Store, full: dict[str, Any], data_reports: dict[str, Any]) -> bool:
    """Writes report.html. The adapter is already published: a report that cannot be rendered (a
    custom image without tunerag_operator.report, a bug) is reported (progress event, traceback on
    stderr), not a failed run."""
    try:
        from tunerag_workloads.finetune.report import render_report

        run.write_text("report.html", render_report(full, data_reports))
    except Exception as exc:  # a bug in rendering, or the store failing now: keep the run's outcome
        traceback.print_exc(file=sys.stderr)
        report_progress(phase="Publishing", event="reportFailed", message=f"{type(exc).__name__}: {exc}")
        return False
    return True


def shrink(result: dict[str, Any], limit: int = 3800) -> dict[str, Any]:
    """Keeps the result under the termination-message limit (the full report is report.json, next
    to reportUri)."""
    def size() -> int:
        return len(json.dumps({"ok": True, **result}, separators=(",", ":"), default=str).encode())

    for key in ("hyperParameters", "baseModel", "datasetDigests"):
        if size() <= limit:
            break
        result.pop(key, None)
    if size() > limit:
        raise WorkloadError("ResultTooLarge", f"the result is {size()} bytes even when trimmed")
    return result


def finetune_main(request: dict[str, Any]) -> dict[str, Any]:
    """The CLI's entry: under torchrun, one rank of the pipeline; with resources.gpus > 1 outside
    torchrun, a torchrun launcher; otherwise the whole pipeline in this process."""
    if distributed.in_torchrun():
        distributed.init()
        rank = distributed.world()[0]
        if rank != 0:  # only rank 0's result is the termination message
            os.environ["TUNERAG_RESULT_PATH"] = os.environ.get("TUNERAG_RESULT_PATH", "/tmp/result") + f".rank{rank}"
        return run_pipeline(request)
    gpus = parse_spec(request.get("spec", request)).resources.gpus
    if gpus > 1:
        request = {**request, "runId": run_id_for(request)}
        return distributed.launch(request, gpus)
    return run_pipeline(request)
