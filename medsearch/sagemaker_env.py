"""SageMaker container conventions for the training job: environment, hyperparameters, metrics.

The training entry point (``training_job/train.py``) reads the ``SM_*`` environment once into a
:class:`TrainingEnv` and hands it to :func:`run_job`, which merges the hyperparameters (``SM_HPS``
JSON, then ``--key value`` argv, which wins), turns them into a
:class:`~medsearch.train.TrainConfig` plus the job's own options (:class:`JobOptions`), then
trains, evaluates and exports. Every ``medsearch train`` option is a hyperparameter under the
same name (dashes or underscores). Managed spot training: checkpoints go to
``/opt/ml/checkpoints`` (which SageMaker syncs to S3 and restores) and the job always resumes
from the latest one there. Metrics are printed in the one line format of
:mod:`medsearch.constants`. No SageMaker SDK here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsearch import storage
from medsearch.constants import CHECKPOINT_DIR, EVALUATION_REPORT, ONNX_SUBDIR, format_metric
from medsearch.data.manifest import read_manifest
from medsearch.data.queries import QUERIES_FILE, queries_beside
from medsearch.errors import ConfigError, InvalidInputError
from medsearch.train.config import TrainConfig, load_train_config, to_bool

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
# Hyperparameters that steer the job around training (everything else is a TrainConfig field).
JOB_KEYS = frozenset({"int8", "eval_split", "model_id", "onnx_exporter"})
# Report section and metric -> metric name after the "eval:" prefix.
REPORT_METRICS = (
    ("in_batch", "mrr@10", "in_batch_mrr@10"),
    ("text_to_image", "r@1", "text_to_image_r@1"),
    ("text_to_image", "r@5", "text_to_image_r@5"),
    ("text_to_image", "r@10", "text_to_image_r@10"),
    ("text_to_image", "mrr@10", "text_to_image_mrr@10"),
    ("text_to_image", "median_rank", "text_to_image_median_rank"),
    ("image_to_text", "r@1", "image_to_text_r@1"),
    ("image_to_text", "r@10", "image_to_text_r@10"),
    ("queries", "ndcg@10", "queries_ndcg@10"),
    ("queries", "r@10", "queries_r@10"),
)


@dataclass(frozen=True)
class TrainingEnv:
    """The ``SM_*`` variables a training container is started with (defaults: SageMaker's)."""

    train_channel: Path | None
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    num_gpus: int
    num_cpus: int
    hyperparameters: Mapping[str, Any]
    job_name: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrainingEnv:
        """Read the environment once (the only place the job looks at it)."""
        try:
            hps = json.loads(environ.get("SM_HPS") or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SM_HPS is not valid JSON: {exc}") from None
        if not isinstance(hps, dict):
            raise ConfigError("SM_HPS must be a JSON object of hyperparameters")
        channel = environ.get("SM_CHANNEL_TRAIN")
        return cls(
            train_channel=Path(channel) if channel else None,
            model_dir=Path(environ.get("SM_MODEL_DIR", "/opt/ml/model")),
            output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")),
            output_dir=Path(environ.get("SM_OUTPUT_DIR", "/opt/ml/output")),
            num_gpus=_int_env(environ, "SM_NUM_GPUS", 0),
            num_cpus=_int_env(environ, "SM_NUM_CPUS", os.cpu_count() or 1),
            hyperparameters={k: v for k, v in hps.items() if not k.startswith("sagemaker_")},
            job_name=environ.get("TRAINING_JOB_NAME") or None,
        )


@dataclass(frozen=True)
class JobOptions:
    """What the job does around training: evaluation split, ONNX export and its model name."""

    eval_split: str = "test"
    int8: bool = True
    model_id: str | None = None
    onnx_exporter: str = "dynamo"


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def parse_hyperparameters(argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``--key value``, ``--key=value`` and bare ``--flag`` (true) into a dict.

    Keys are normalised to underscores, so ``--max-samples`` and ``--max_samples`` are the same.
    """
    values: dict[str, Any] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"unexpected argument {token!r}: hyperparameters are --key value")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "true"
        values[key.replace("-", "_")] = value
        i += 1
    return values


def find_manifest(channel: Path, name: str | None = None) -> str:
    """Return the manifest in a training channel: ``name``, else ``manifest.jsonl|csv``, else the
    only JSON Lines/CSV file there (``queries.jsonl`` is a query set, never the manifest)."""
    if name:
        if storage.is_s3(name) or Path(name).is_absolute():
            return name
        path = channel / name
        if not path.is_file():
            raise ConfigError(f"manifest {name!r} not found in the training channel {channel}")
        return str(path)
    if not channel.is_dir():
        raise ConfigError(f"training channel {channel} does not exist")
    for candidate in MANIFEST_NAMES:
        if (channel / candidate).is_file():
            return str(channel / candidate)
    found = sorted(
        p
        for p in channel.iterdir()
        if p.is_file() and p.suffix.lower() in {".jsonl", ".csv"} and p.name != QUERIES_FILE
    )
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ConfigError(
            f"cannot tell the manifest in {channel} (candidates: {names}): "
            "name it manifest.jsonl or pass the hyperparameter --data NAME"
        )
    return str(found[0])


def training_config(
    env: TrainingEnv, hyperparameters: Mapping[str, Any], out: Path
) -> tuple[TrainConfig, JobOptions]:
    """Turn the merged hyperparameters into a resolved TrainConfig (training into ``out``) and
    the job options; unknown names are an error that lists them."""
    values = dict(hyperparameters)
    if "out" in values:
        raise ConfigError("'out' is set by the job (SM_MODEL_DIR); do not pass it")
    job = _job_options({k: values.pop(k) for k in list(values) if k in JOB_KEYS})
    config_file = values.pop("config", None)
    if config_file and env.train_channel and not storage.is_s3(str(config_file)):
        config_file = str(env.train_channel / str(config_file))
    data = values.get("data")
    if env.train_channel is not None:
        values["data"] = find_manifest(env.train_channel, str(data) if data else None)
    elif not data:
        raise ConfigError("no training data: SM_CHANNEL_TRAIN is unset and no --data was given")
    values["out"] = str(out)
    values.setdefault("checkpoint_dir", CHECKPOINT_DIR)
    # Managed spot: a restarted job finds its checkpoints restored and carries on from them.
    values.setdefault("resume", True)
    if env.num_gpus > 0:
        values.setdefault("device", "cuda")
        values.setdefault("num_workers", max(0, min(8, env.num_cpus - 1)))
        if env.num_gpus > 1:
            log.warning("%d GPUs present; training uses one", env.num_gpus)
    else:
        values.setdefault("device", "cpu")
    return load_train_config(config_file, values), job


def _job_options(values: Mapping[str, Any]) -> JobOptions:
    options = JobOptions()
    raw = values.get("int8", options.int8)
    try:
        int8 = to_bool(raw)  # the same spellings as the training config's own flags
    except ValueError:
        raise ConfigError(f"int8 = {raw!r} is not a valid bool (true or false)") from None
    split = str(values.get("eval_split", options.eval_split))
    if split not in {"test", "validation", "train"}:
        raise ConfigError(f"eval_split = {split!r}: use test, validation or train")
    exporter = str(values.get("onnx_exporter", options.onnx_exporter))
    model_id = values.get("model_id")
    return JobOptions(split, int8, str(model_id) if model_id else None, exporter)


def history_metric_lines(history: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """Yield the metric lines of each trained epoch (loss, learning rate, validation R@k)."""
    for row in history:
        epoch = int(row["epoch"])
        if epoch == 0:
            continue  # the untrained baseline has no loss; its R@k is in history.jsonl
        yield format_metric("epoch", epoch, epoch=epoch)
        if row.get("loss") is not None:
            yield format_metric("train:loss", row["loss"], epoch=epoch)
        if row.get("lr") is not None:
            yield format_metric("train:learning_rate", row["lr"], epoch=epoch)
        val = row.get("val") or {}
        for section, key, name in (
            ("text_to_image", "r@1", "text_to_image_r@1"),
            ("text_to_image", "r@10", "text_to_image_r@10"),
            ("image_to_text", "r@10", "image_to_text_r@10"),
        ):
            value = (val.get(section) or {}).get(key)
            if value is not None:
                yield format_metric(f"validation:{name}", value, epoch=epoch)


class HistoryFollower:
    """Emits each epoch's metric lines as soon as the training loop writes ``history.jsonl``.

    ``train()`` writes the history (atomically) after every epoch; following it from a thread
    gives SageMaker one timestamped point per epoch while the job runs, not all of them at the
    end. Epochs already emitted are not repeated; leaving the block emits whatever is left.
    """

    def __init__(self, path: Path, emit: Callable[[str], None], *, interval: float = 5.0) -> None:
        self.path = path
        self.emit = emit
        self.interval = interval
        self.last_epoch = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="history-follower", daemon=True)

    def poll(self) -> None:
        """Emit the lines of epochs written since the last poll."""
        try:
            text = self.path.read_text()
        except OSError:
            return
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        fresh = [row for row in rows if int(row.get("epoch", 0)) > self.last_epoch]
        for line in history_metric_lines(fresh):
            self.emit(line)
        if fresh:
            self.last_epoch = max(int(row["epoch"]) for row in fresh)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> HistoryFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def report_metric_lines(report: Mapping[str, Any]) -> Iterator[str]:
    """Yield the metric lines of an evaluation report (``eval:`` names)."""
    for section, key, name in REPORT_METRICS:
        value = (report.get(section) or {}).get(key)
        if value is not None:
            yield format_metric(f"eval:{name}", value)


def write_failure(output_dir: Path, message: str) -> None:
    """Write SageMaker's failure file (``SM_OUTPUT_DIR/failure``), which becomes the job's
    FailureReason."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "failure").write_text(message[:1000] + "\n")
    except OSError as exc:  # the reason is also logged; a read-only folder must not mask it
        log.warning("cannot write the failure file in %s: %s", output_dir, exc)


def run_job(env: TrainingEnv, argv: Sequence[str], *, emit: Callable[[str], None]) -> None:
    """Train into a work folder, publish it to the model dir, evaluate it and export ONNX;
    ``emit`` gets each metric line (the entry point prints them)."""
    # torch and the training stack load here, not when the job's settings are checked.
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
        with HistoryFollower(config.out / HISTORY, emit):
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
        emit(line)

    onnx_dir = env.model_dir / ONNX_SUBDIR
    export_onnx(
        encoder.bundle, onnx_dir, int8=job.int8, exporter=job.onnx_exporter, model_id=model_id
    )
    log.info("model, ONNX encoders and report written (%s)", model_id)
