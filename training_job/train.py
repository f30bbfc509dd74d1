"""SageMaker training entry point (script mode): ``SM_*`` environment → medsearch.train.

Hyperparameters are every ``medsearch train`` option (``--base tiny --epochs 1``), plus
``--eval-split``, ``--int8``, ``--model-id`` and ``--onnx-exporter``. One job yields everything
serving needs: the model (``SM_MODEL_DIR``), its ONNX encoders (``SM_MODEL_DIR/onnx/``) and the
evaluation report (``SM_OUTPUT_DATA_DIR/evaluation.json``). Checkpoints go to
``/opt/ml/checkpoints`` (or ``--checkpoint-dir``), and a restarted spot job resumes from them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medsearch.constants import EVALUATION_REPORT, ONNX_SUBDIR
from medsearch.errors import InvalidInputError, MedsearchError
from medsearch.sagemaker_env import (
    HistoryFollower,
    TrainingEnv,
    parse_hyperparameters,
    report_metric_lines,
    training_config,
    write_failure,
)

log = logging.getLogger("training_job")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and export as the SageMaker environment says; 2 on a bad input."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        run(TrainingEnv.from_environ(os.environ), sys.argv[1:] if argv is None else argv)
    except MedsearchError as exc:
        log.error("training job failed: %s", exc)
        write_failure(Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")), str(exc))
        return 2
    return 0


def run(env: TrainingEnv, argv: Sequence[str]) -> None:
    """Train into a work folder, publish it to the model dir, evaluate it and export ONNX."""
    from medsearch.data.manifest import read_manifest
    from medsearch.data.queries import queries_beside
    from medsearch.evaluate import evaluate_model
    from medsearch.model.encoder import load_encoder
    from medsearch.model.onnx_export import export_onnx
    from medsearch.train import train
    from medsearch.train.loop import HISTORY

    hyperparameters = {**env.hyperparameters, **parse_hyperparameters(argv)}
    with tempfile.TemporaryDirectory(prefix="medsearch-train-") as work:
        config, job = training_config(env, hyperparameters, Path(work) / "model")
        # Checked before training, so a wrong split fails in seconds, not after hours.
        records = read_manifest(config.data, split=job.eval_split)
        if not records:
            raise InvalidInputError(f"{config.data} has no {job.eval_split!r} records to evaluate")
        model_id = job.model_id or env.job_name or f"medsearch-{config.base}"
        # Metric lines appear as each epoch ends (SageMaker timestamps them as they come).
        with HistoryFollower(config.out / HISTORY, _print_line):
            result = train(config)
        # Copied into place (not renamed): SM_MODEL_DIR may be a mount point.
        shutil.copytree(result.out, env.model_dir, dirs_exist_ok=True)

    encoder = load_encoder(str(env.model_dir), device=config.device)
    queries = queries_beside(config.data)
    report = evaluate_model(encoder, records, queries=queries, split=job.eval_split)
    report["model"] = model_id
    env.output_data_dir.mkdir(parents=True, exist_ok=True)
    (env.output_data_dir / EVALUATION_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    for line in report_metric_lines(report):
        _print_line(line)

    onnx_dir = env.model_dir / ONNX_SUBDIR
    export_onnx(
        encoder.bundle, onnx_dir, int8=job.int8, exporter=job.onnx_exporter, model_id=model_id
    )
    log.info("model, ONNX encoders and report written (%s)", model_id)


def _print_line(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
