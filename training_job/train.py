"""SageMaker training entry point (script mode): ``SM_*`` environment → medsearch.train.

Hyperparameters are every ``medsearch train`` option (``--base tiny --epochs 1``), plus
``--eval-split``, ``--int8``, ``--model-id`` and ``--onnx-exporter``. One job yields everything
serving needs: the model (``SM_MODEL_DIR``), its ONNX encoders (``SM_MODEL_DIR/onnx/``) and the
evaluation report (``SM_OUTPUT_DATA_DIR/evaluation.json``). Checkpoints go to
``/opt/ml/checkpoints`` (or ``--checkpoint-dir``), and a restarted spot job resumes from them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medsearch.errors import MedsearchError
from medsearch.sagemaker_env import TrainingEnv, run_job, write_failure

log = logging.getLogger("training_job")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and export as the SageMaker environment says; 2 on a bad input."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        env = TrainingEnv.from_environ(os.environ)
        run_job(env, sys.argv[1:] if argv is None else argv, emit=_print_line)
    except MedsearchError as exc:
        log.error("training job failed: %s", exc)
        write_failure(Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")), str(exc))
        return 2
    return 0


def _print_line(line: str) -> None:
    """Print a metric line (SageMaker reads them from stdout as they come)."""
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
