"""Training configuration: base defaults, config files (JSON/YAML), flags over files, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsearch.cli import main
from medsearch.errors import ConfigError
from medsearch.train.config import (
    PRETRAINED_DEFAULTS,
    TINY_DEFAULTS,
    TrainConfig,
    load_train_config,
)


def test_given_pretrained_base_when_resolved_then_seed_best_run_defaults() -> None:
    config = load_train_config(
        None, {"data": "m.jsonl", "out": "o", "base": "openai/clip-vit-base-patch32"}
    )
    assert (config.batch_size, config.lr, config.epochs, config.max_samples) == (
        64,
        5e-5,
        10,
        50_000,
    )
    assert config.checkpoint_dir == Path("o/checkpoints")


def test_given_no_base_when_resolved_then_the_pretrained_clip_of_real_use() -> None:
    config = load_train_config(None, {"data": "m.jsonl", "out": "o"})
    assert config.base == "openai/clip-vit-base-patch32" and not config.is_tiny
    assert config.lr == PRETRAINED_DEFAULTS["lr"]


def test_given_tiny_base_when_resolved_then_tiny_defaults() -> None:
    config = load_train_config(None, {"data": "m.jsonl", "out": "o", "base": "tiny"})
    assert config.is_tiny
    assert {k: getattr(config, k) for k in TINY_DEFAULTS} == TINY_DEFAULTS
    assert TINY_DEFAULTS != PRETRAINED_DEFAULTS


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_given_config_file_and_flags_when_loaded_then_flags_win(
    tmp_path: Path, suffix: str
) -> None:
    # Given a file that sets epochs, lr and batch size (dashes or underscores)
    values = {
        "data": "file.jsonl",
        "out": "file-out",
        "base": "tiny",
        "epochs": 3,
        "lr": 0.01,
        "batch-size": 8,
    }
    path = tmp_path / f"train{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    # When flags override epochs and data
    config = load_train_config(path, {"epochs": 5, "data": "flag.jsonl"})
    # Then flags win, the file fills the rest, the base's defaults fill what neither sets
    assert (config.epochs, config.data, config.lr, config.batch_size) == (5, "flag.jsonl", 0.01, 8)
    assert config.out == Path("file-out")
    assert config.weight_decay == TINY_DEFAULTS["weight_decay"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 1}, "batch_size"),
        ({"schedule": "step"}, "schedule"),
        ({"precision": "fp8"}, "precision"),
        ({"warmup": -0.5}, "warmup"),
        ({"max_samples": -3}, "max_samples"),
        ({"grad_clip": -1}, "grad_clip"),
        ({"caption_dropout": 1.0}, "caption_dropout"),
        ({"caption_dropout": -0.1}, "caption_dropout"),
        ({"epochs": "many"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"freeze_vision": "maybe"}, "freeze_vision"),
        ({"freeze_vision": True, "freeze_text": True}, "nothing to train"),
        ({"colour": "blue"}, "unknown training option"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"optimizer": "adam", "weight_decay": 0.1}, "needs optimizer adamw"),
        ({"data": ""}, "no training data"),
    ],
)
def test_given_bad_value_when_loaded_then_config_error_names_it(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, {"data": "m.jsonl", "out": "o", **values})


def test_given_unparsable_or_non_mapping_file_when_loaded_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{epochs: 3")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_train_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_train_config(tmp_path / "missing.json")


def test_given_config_when_serialised_then_round_trips() -> None:
    config = load_train_config(None, {"data": "m.jsonl", "out": "o", "freeze_text": True})
    again = load_train_config(None, config.to_json())
    assert again == config and isinstance(TrainConfig().out, Path)


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr", "-1"],
        ["--schedule", "step"],
        ["--precision", "fp8"],
        ["--freeze-vision", "--freeze-text"],
        ["--config", "/nonexistent/train.json"],
    ],
)
def test_given_bad_flag_value_when_cli_runs_then_one_line_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    code = main(
        ["train", "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), *flags]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("medsearch train: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_given_flag_of_wrong_type_when_cli_parses_then_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "m.jsonl", "--out", "o", "--epochs", "ten"])
    assert exc.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_given_config_file_and_flag_when_cli_trains_then_flag_wins_and_file_fills_rest(
    synth_corpus: Path, tmp_path: Path
) -> None:
    # Given a YAML file with epochs 3 and batch size 16
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {synth_corpus}\nbase: tiny\nepochs: 3\nbatch_size: 16\nlr: 0.002\n")
    # When the CLI overrides epochs with 0 (save the untrained base)
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "o"), "--epochs", "0"])
    # Then the run used the flag's epochs and the file's other values
    used = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert code == 0
    assert (used["epochs"], used["batch_size"], used["lr"]) == (0, 16, 0.002)
    assert used["data"] == str(synth_corpus)


def test_given_torch_blocked_when_config_loaded_and_cli_parsed_then_no_torch_needed(
    python_without,
) -> None:
    # The CLI validates a configuration before importing torch, and the ONNX encoder's package
    # (medsearch.model) must import in a Lambda without torch.
    code = (
        "import medsearch.model\n"
        "from medsearch.cli import build_parser\n"
        "from medsearch.train import load_train_config\n"
        "build_parser().parse_args(['train', '--data', 'm', '--out', 'o', '--epochs', '2'])\n"
        "print(load_train_config(None, {'data': 'm', 'out': 'o', 'epochs': 2}).epochs)\n"
    )
    result = python_without({"torch", "transformers"}, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


def test_given_plain_adam_constant_when_resolved_then_no_decay_warmup_or_clipping() -> None:
    values = {"data": "m.jsonl", "out": "o", "base": "openai/clip-vit-base-patch32"}
    config = load_train_config(None, {**values, "optimizer": "adam", "schedule": "constant"})
    assert (config.weight_decay, config.warmup, config.grad_clip, config.lr) == (
        0.0,
        0.0,
        0.0,
        5e-5,
    )
    # The default recipe keeps its decay, warm-up and clipping
    default = load_train_config(None, values)
    assert (default.optimizer, default.weight_decay, default.grad_clip) == ("adamw", 0.1, 1.0)
    assert default.warmup == 0.05
    # An explicit warm-up with a constant rate is honoured
    assert load_train_config(None, {**values, "schedule": "constant", "warmup": 10}).warmup == 10
