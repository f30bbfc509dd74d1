"""The SageMaker training entry point, driven through ``main([...])`` with ``SM_*`` temp dirs."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from medsearch import storage
from medsearch.constants import METRIC_DEFINITIONS, METRIC_NAMES, format_metric
from medsearch.data.manifest import read_manifest, write_manifest
from medsearch.errors import ConfigError
from medsearch.sagemaker_env import (
    TrainingEnv,
    find_manifest,
    parse_hyperparameters,
    training_config,
)
from training_job.train import main

FAST = ["--base", "tiny", "--batch-size", "16", "--eval-each-epoch", "false"]


def _sm_env(monkeypatch: pytest.MonkeyPatch, root: Path, channel: Path, hps: dict) -> Path:
    """Point every SM_* variable at folders under ``root``; return the checkpoint folder."""
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(channel))
    monkeypatch.setenv("SM_MODEL_DIR", str(root / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(root / "output" / "data"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(root / "output"))
    monkeypatch.setenv("SM_NUM_GPUS", "0")
    monkeypatch.setenv("SM_HPS", json.dumps(hps))
    return root / "checkpoints"


def _metric_lines(text: str) -> dict[str, list[float]]:
    """Parse printed output with the metric_definitions regexes, as SageMaker does."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        matches = [d for d in METRIC_DEFINITIONS if re.search(d["Regex"], line)]
        if line.startswith("[metric]"):
            assert len(matches) == 1, f"{line!r} matched {len(matches)} definitions"
        for definition in matches:
            value = float(re.search(definition["Regex"], line).group(1))  # type: ignore[union-attr]
            found.setdefault(definition["Name"], []).append(value)
    return found


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path) -> Path:
    """A training channel: the synthetic corpus (manifest, images/, queries.jsonl) under a name
    that is not manifest.jsonl, so the job has to find it."""
    folder = tmp_path_factory.mktemp("channel")
    shutil.copytree(synth_corpus.parent, folder, dirs_exist_ok=True)
    (folder / "manifest.jsonl").rename(folder / "corpus.jsonl")
    return folder


def test_given_sm_dirs_when_main_runs_then_model_onnx_report_and_metrics_are_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, channel: Path, capsys, caplog
) -> None:
    # Given SM_* folders, hyperparameters in SM_HPS and on the command line (which wins)
    ckpt = _sm_env(monkeypatch, tmp_path, channel, {"epochs": 5, "base": "tiny"})
    argv = [*FAST, "--epochs", "1", "--checkpoint-dir", str(ckpt), "--model-id", "run-1"]
    # When the entry point runs
    assert main(argv) == 0
    # Then the model folder loads as a CLIP and holds the ONNX encoders (fp32 and int8)
    model = tmp_path / "model"
    assert (model / "config.json").is_file() and (model / "history.jsonl").is_file()
    onnx = model / "onnx"
    for name in ("text.onnx", "vision.onnx", "text.int8.onnx", "vision.int8.onnx"):
        assert (onnx / name).is_file(), name
    assert json.loads((onnx / "onnx_manifest.json").read_text())["model_id"] == "run-1"
    # And the evaluation report (test split, with the query set) is in the output data folder
    report = json.loads((tmp_path / "output" / "data" / "evaluation.json").read_text())
    assert report["split"] == "test" and report["model"] == "run-1"
    assert {"in_batch", "text_to_image", "image_to_text", "queries"} <= set(report)
    # And one epoch was trained (argv beat SM_HPS), checkpointed where asked
    assert [json.loads(x)["epoch"] for x in (model / "history.jsonl").read_text().splitlines()] == [
        1
    ]
    assert any(ckpt.iterdir())
    # And the printed metrics parse with the metric_definitions regexes
    metrics = _metric_lines(capsys.readouterr().out)
    assert metrics["epoch"] == [1.0]
    assert len(metrics["train:loss"]) == 1 and metrics["train:loss"][0] > 0
    t2i = report["text_to_image"]["r@10"]
    assert metrics["eval:text_to_image_r@10"] == [pytest.approx(t2i, rel=1e-5)]
    assert "eval:queries_ndcg@10" in metrics

    # When a new job with other options reuses the checkpoint URI
    assert main([*FAST, "--epochs", "2", "--checkpoint-dir", str(ckpt)]) == 2
    # Then it is refused with the reason, instead of returning the earlier job's model
    failure = (tmp_path / "output" / "failure").read_text()
    assert "another run" in failure and "epochs 1 -> 2" in failure

    # When the first job is started again with its checkpoints (a spot restart)
    caplog.set_level(logging.INFO)
    argv2 = [*FAST, "--epochs", "1", "--checkpoint-dir", str(ckpt)]
    assert main([*argv2, "--int8", "false", "--onnx-exporter", "torchscript"]) == 0
    # Then it resumed after epoch 1 instead of starting over, and honoured the job options
    assert any("resuming from" in r.getMessage() for r in caplog.records)
    rows = [json.loads(x) for x in (model / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert not (onnx / "text.int8.onnx").exists()
    assert json.loads((onnx / "onnx_manifest.json").read_text())["exporter"] == "torchscript"


def test_given_manifest_of_s3_images_when_main_runs_then_it_trains_from_s3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth_corpus: Path, s3_bucket: str
) -> None:
    # Given images in (moto) S3 and a channel holding only a manifest that points at them
    storage.upload_dir(synth_corpus.parent / "images", f"s3://{s3_bucket}/images")
    records = read_manifest(synth_corpus)
    channel = tmp_path / "channel"
    remote = [
        r.__class__(
            r.image_id,
            f"s3://{s3_bucket}/images/{Path(r.image).name}",
            r.caption,
            r.split,
            r.metadata,
        )
        for r in records
    ]
    write_manifest(channel / "manifest.jsonl", remote)
    ckpt = _sm_env(monkeypatch, tmp_path, channel, {})
    argv = [*FAST, "--epochs", "1", "--checkpoint-dir", str(ckpt), "--int8", "false"]
    # When the job runs (torchscript export keeps this test short)
    assert main([*argv, "--onnx-exporter", "torchscript"]) == 0
    # Then it trained and evaluated on the S3 images
    report = json.loads((tmp_path / "output" / "data" / "evaluation.json").read_text())
    assert report["n"] == sum(1 for r in records if r.split == "test")
    assert (tmp_path / "model" / "onnx" / "vision.onnx").is_file()


def test_given_bad_hyperparameter_when_main_runs_then_exit_2_and_failure_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, channel: Path
) -> None:
    _sm_env(monkeypatch, tmp_path, channel, {})
    assert main(["--epochs", "1", "--learning-rat", "0.1"]) == 2
    failure = (tmp_path / "output" / "failure").read_text()
    assert "learning_rat" in failure
    assert not (tmp_path / "model").exists()
    monkeypatch.setenv("SM_HPS", "{broken")
    assert main([]) == 2
    assert "SM_HPS" in (tmp_path / "output" / "failure").read_text()


def test_given_argv_forms_then_hyperparameters_parse() -> None:
    parsed = parse_hyperparameters(
        ["--base", "tiny", "--max-samples=100", "--freeze-text", "--epochs", "2", "--augment"]
    )
    assert parsed == {
        "base": "tiny",
        "max_samples": "100",
        "freeze_text": "true",
        "epochs": "2",
        "augment": "true",
    }
    with pytest.raises(ConfigError, match="--key value"):
        parse_hyperparameters(["tiny"])


def test_given_channel_layouts_then_the_manifest_is_found_or_the_error_says_how(
    tmp_path: Path,
) -> None:
    (tmp_path / "queries.jsonl").write_text("")
    (tmp_path / "records.jsonl").write_text("")
    assert find_manifest(tmp_path) == str(tmp_path / "records.jsonl")
    (tmp_path / "other.csv").write_text("")
    with pytest.raises(ConfigError, match="--data"):
        find_manifest(tmp_path)
    assert find_manifest(tmp_path, "other.csv") == str(tmp_path / "other.csv")
    (tmp_path / "manifest.jsonl").write_text("")
    assert find_manifest(tmp_path) == str(tmp_path / "manifest.jsonl")
    with pytest.raises(ConfigError, match="not found"):
        find_manifest(tmp_path, "missing.jsonl")


def test_given_sagemaker_env_then_config_uses_checkpoints_gpu_and_rejects_unknown_names(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.jsonl").write_text("")
    environ = {
        "SM_CHANNEL_TRAIN": str(tmp_path),
        "SM_NUM_GPUS": "4",
        "SM_NUM_CPUS": "16",
        "SM_HPS": json.dumps({"epochs": 3, "sagemaker_program": "train.py"}),
    }
    env = TrainingEnv.from_environ(environ)
    assert env.hyperparameters == {"epochs": 3}
    config, job = training_config(env, {**env.hyperparameters, "int8": "False"}, tmp_path / "m")
    assert config.checkpoint_dir == Path("/opt/ml/checkpoints") and config.resume is True
    assert config.device == "cuda" and config.num_workers == 8 and config.epochs == 3
    assert config.data == str(tmp_path / "manifest.jsonl") and config.out == tmp_path / "m"
    assert job.int8 is False and job.eval_split == "test"
    with pytest.raises(ConfigError, match="bogus"):
        training_config(env, {"bogus": "1"}, tmp_path / "m")
    assert training_config(env, {"int8": "yes"}, tmp_path / "m")[1].int8 is True
    with pytest.raises(ConfigError, match="int8 = 'maybe'"):
        training_config(env, {"int8": "maybe"}, tmp_path / "m")
    with pytest.raises(ConfigError, match="SM_MODEL_DIR"):
        training_config(env, {"out": "/elsewhere"}, tmp_path / "m")
    with pytest.raises(ConfigError, match="SM_HPS"):
        TrainingEnv.from_environ({"SM_HPS": "{not json"})


def test_given_every_metric_name_then_its_regex_reads_its_line_and_no_other() -> None:
    for name in METRIC_NAMES:
        line = format_metric(name, 0.1234567, epoch=3)
        matching = [d["Name"] for d in METRIC_DEFINITIONS if re.search(d["Regex"], line)]
        assert matching == [name]
        regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
        assert float(re.search(regex, line).group(1)) == pytest.approx(0.123457)  # type: ignore[union-attr]
    assert re.search(METRIC_DEFINITIONS[1]["Regex"], format_metric("train:loss", 2.5e-7))


def test_given_history_written_per_epoch_then_follower_emits_each_epoch_once(
    tmp_path: Path,
) -> None:
    from medsearch.sagemaker_env import HistoryFollower

    lines: list[str] = []
    path = tmp_path / "history.jsonl"
    follower = HistoryFollower(path, lines.append, interval=3600)
    follower.poll()  # nothing written yet
    rows = [{"epoch": 0, "loss": None, "lr": 0.0}, {"epoch": 1, "loss": 0.9, "lr": 1e-3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    follower.poll()
    assert lines == [
        format_metric("epoch", 1, epoch=1),
        format_metric("train:loss", 0.9, epoch=1),
        format_metric("train:learning_rate", 1e-3, epoch=1),
    ]
    rows.append({"epoch": 2, "loss": 0.5, "lr": 5e-4, "val": {"text_to_image": {"r@10": 0.4}}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with follower:  # leaving the block polls a last time
        pass
    assert lines[3:] == [
        format_metric("epoch", 2, epoch=2),
        format_metric("train:loss", 0.5, epoch=2),
        format_metric("train:learning_rate", 5e-4, epoch=2),
        format_metric("validation:text_to_image_r@10", 0.4, epoch=2),
    ]
