"""The training loop through its real entry points: outputs, resume, freezing, bad records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medsearch.cli import main
from medsearch.data import images
from medsearch.data.manifest import Record, read_manifest
from medsearch.errors import ConfigError, ImageDecodeError
from medsearch.model.loading import load_clip, save_clip
from medsearch.model.tiny import build_tiny_clip
from medsearch.train import TrainConfig, load_train_config, train
from medsearch.train import data as train_data
from medsearch.train.data import choose_validation
from medsearch.train.loop import MAX_LOGIT_SCALE, autocast_dtype, split_records

# Small and quick: a few steps per epoch on the shared synthetic corpus.
QUICK = {
    "base": "tiny",
    "batch_size": 16,
    "max_samples": 32,
    "eval_each_epoch": False,
    "augment": True,
}


def _config(data: Path, out: Path, **values: object) -> TrainConfig:
    return load_train_config(None, {"data": str(data), "out": str(out), **QUICK, **values})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_clip(str(folder)).model.state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> None:
    for name, tensor in a.items():
        if name.startswith(prefix):
            assert torch.equal(tensor, b[name]), name


@pytest.fixture
def corpus_copy(tmp_path: Path, synth_corpus: Path) -> Path:
    """A writable copy of the synthetic corpus (manifest paths are relative)."""
    shutil.copytree(synth_corpus.parent, tmp_path / "corpus")
    return tmp_path / "corpus" / "manifest.jsonl"


def test_given_records_when_split_then_captionless_and_other_splits_left_out() -> None:
    records = [
        Record("a", "a.png", "chest", "train"),
        Record("b", "b.png", None, "train"),
        Record("c", "c.png", "knee", "validation"),
        Record("d", "d.png", "hand", None),
        Record("e", "e.png", "head", "test"),
    ]
    train_records, validation = split_records(records)
    assert [r.image_id for r in train_records] == ["a", "d"]
    assert [r.image_id for r in validation] == ["c"]


def test_given_cpu_when_autocast_requested_then_fp32_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) is None
    assert "GPUs only" in caplog.text


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_given_gpu_generation_when_auto_precision_then_native_bf16_else_fp16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    # V100 (7.0) and T4 (7.5) emulate bf16, which torch.cuda.is_bf16_supported() still counts
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype("auto", torch.device("cuda")) == expected
    assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16  # asked for: honoured


def test_given_epochs_0_when_trained_then_tiny_initial_weights_saved_unchanged(
    synth_corpus: Path, tmp_path: Path
) -> None:
    result = train(_config(synth_corpus, tmp_path / "out", epochs=0, seed=3, eval_each_epoch=True))
    captions = [r.caption for r in split_records(read_manifest(synth_corpus))[0]]
    expected = build_tiny_clip(captions, seed=3).model.state_dict()
    saved = _weights(tmp_path / "out")
    _assert_same(expected, saved)
    # The baseline's validation metrics are recorded as epoch 0; no checkpoints are written
    assert result.epochs == 0 and result.history[0]["epoch"] == 0
    assert "text_to_image" in result.history[0]["val"]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_given_folder_base_and_epochs_0_when_trained_then_same_weights(
    synth_corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train(_config(synth_corpus, tmp_path / "out", base=str(tiny_model_dir), epochs=0))
    _assert_same(_weights(tiny_model_dir), _weights(tmp_path / "out"))


@pytest.mark.parametrize(
    ("given", "shown"), [(None, "medsearch-clip-tiny"), ("chest-ct", "chest-ct")]
)
def test_given_a_trained_folder_when_served_then_clients_see_its_name_not_its_folder(
    synth_corpus: Path, tmp_path: Path, given: str | None, shown: str
) -> None:
    from medsearch.model.encoder import TorchEncoder
    from medsearch.model.onnx_encoder import read_onnx_manifest
    from medsearch.model.onnx_export import export_onnx

    out = tmp_path / "model"  # the demo's folder name, which the page used to show
    train(_config(synth_corpus, out, epochs=0, name=given))
    bundle = load_clip(str(out))
    assert TorchEncoder(bundle).name == shown and TorchEncoder(bundle).model_id == str(out)
    export_onnx(bundle, tmp_path / "onnx")
    assert read_onnx_manifest(tmp_path / "onnx").name == shown


def test_given_an_unshowable_name_when_trained_then_config_error(
    synth_corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="name"):
        train(_config(synth_corpus, tmp_path / "out", epochs=0, name="two\nlines"))


def test_given_cli_when_trained_then_model_history_curve_and_checkpoints(
    synth_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    code = main(
        [
            "train",
            "--data",
            str(synth_corpus),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--max-samples",
            "32",
            "--eval-each-epoch",
            "--base",
            "tiny",
        ]
    )
    assert code == 0
    assert f"model saved to {out}" in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert all(row["steps"] == 2 and row["loss"] > 0 for row in history[1:])
    assert all(0 <= row["val"]["text_to_image"]["r@10"] <= 1 for row in history)
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").glob("run-*/*.pt")) == [
        "epoch-0001.pt",
        "epoch-0002.pt",
    ]
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 2
    assert load_clip(str(out)).model.config.model_type == "vision-text-dual-encoder"


def test_given_interrupted_run_when_resumed_then_identical_to_uninterrupted(
    synth_corpus: Path, tmp_path: Path
) -> None:
    # Given an uninterrupted 3-epoch run
    full = train(_config(synth_corpus, tmp_path / "full", epochs=3))
    # And a run that died during epoch 3 (its last checkpoint is epoch 2)
    ckpt = tmp_path / "resumed" / "ckpt"
    shutil.copytree(tmp_path / "full" / "checkpoints", ckpt)
    (run,) = ckpt.glob("run-*")
    (run / "epoch-0003.pt").unlink()
    # When it resumes
    resumed = train(
        _config(synth_corpus, tmp_path / "resumed", epochs=3, resume=True, checkpoint_dir=str(ckpt))
    )
    # Then it trains only epoch 3, with the same loss and the same final weights
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"))


def test_given_workers_when_trained_then_same_losses_as_in_process_loading(
    synth_corpus: Path, tmp_path: Path
) -> None:
    # Augmentation is seeded per (seed, epoch, record), so worker processes change nothing; the
    # workers live across epochs, so the second epoch shows whether they see its number.
    inline = train(_config(synth_corpus, tmp_path / "inline", epochs=2, num_workers=0))
    workers = train(_config(synth_corpus, tmp_path / "workers", epochs=2, num_workers=2))
    assert [r["loss"] for r in workers.history] == [r["loss"] for r in inline.history]
    _assert_same(_weights(tmp_path / "inline"), _weights(tmp_path / "workers"))


def test_given_validation_each_epoch_when_trained_then_validation_images_decoded_once(
    synth_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that validates after each of 3 epochs (and scores the base first)
    decoded: list[str] = []
    real = images.load_record_images

    def counting(records: list[Record], **kwargs: object) -> list[tuple[Record, object]]:
        decoded.extend(r.image_id for r in records)
        return real(records, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "load_record_images", counting)
    monkeypatch.setattr(train_data, "load_record_images", counting)
    config = _config(synth_corpus, tmp_path / "out", epochs=3, eval_each_epoch=True, val_limit=20)
    result = train(config)
    # Then each chosen validation image was decoded once, not once per scoring
    _, validation = split_records(read_manifest(synth_corpus))
    chosen = {r.image_id for r in choose_validation(validation, 20, seed=0)}
    val_decodes = [i for i in decoded if i in {r.image_id for r in validation}]
    assert sorted(val_decodes) == sorted(chosen)
    # and every epoch, the base's row included, was scored
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert all(row["val"]["text_to_image"]["r@10"] is not None for row in result.history)


def test_given_resume_without_checkpoint_when_trained_then_starts_fresh(
    synth_corpus: Path, tmp_path: Path
) -> None:
    result = train(_config(synth_corpus, tmp_path / "out", epochs=1, resume=True))
    assert [r["epoch"] for r in result.history] == [1]


def test_given_another_runs_checkpoints_when_resumed_then_refused_and_nothing_pruned(
    synth_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a 3-epoch run, then a 1-epoch run with another lr into the same folder
    out = tmp_path / "out"
    train(_config(synth_corpus, out, epochs=3))
    second = train(_config(synth_corpus, out, epochs=1, lr=1e-3))
    checkpoints = sorted(p.relative_to(out) for p in (out / "checkpoints").rglob("epoch-*.pt"))
    # Then neither run pruned the other's checkpoints
    assert len(checkpoints) == 3 and len({p.parent for p in checkpoints}) == 2
    trained = _weights(out)
    # When a third run with yet other options resumes from that folder
    flags = ["train", "--data", str(synth_corpus), "--out", str(out), "--base", "tiny"]
    flags += ["--batch-size", "16", "--max-samples", "32", "--no-eval-each-epoch"]
    capsys.readouterr()
    code = main([*flags, "--resume", "--epochs", "2", "--lr", "1e-3"])
    # Then it is refused in one line naming what differs, and the saved model is untouched
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "another run" in err and "epochs 1 -> 2" in err
    _assert_same(trained, _weights(out))
    assert second.epochs == 1


def test_given_a_finished_run_when_the_same_run_resumes_then_nothing_retrains(
    synth_corpus: Path, tmp_path: Path
) -> None:
    first = train(_config(synth_corpus, tmp_path / "out", epochs=2))
    again = train(_config(synth_corpus, tmp_path / "out", epochs=2, resume=True))
    assert again.history == first.history


def test_given_changed_data_when_resumed_then_refused(
    synth_corpus: Path, corpus_copy: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    train(_config(synth_corpus, tmp_path / "a", epochs=1, checkpoint_dir=str(ckpt)))
    lines = corpus_copy.read_text().splitlines()
    corpus_copy.write_text("\n".join(lines[1:]) + "\n")  # one record fewer
    with pytest.raises(ConfigError, match="data '"):
        train(_config(corpus_copy, tmp_path / "b", epochs=1, resume=True, checkpoint_dir=str(ckpt)))


def test_given_fp32_checkpoint_when_resumed_in_fp16_then_scaler_starts_fresh(
    synth_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint of an fp32 run holds an empty GradScaler state, which an enabled scaler
    # refuses to load; resumed with fp16 the scale starts afresh (fp16 is a GPU setting, so the
    # enabled scaler is simulated by the dtype choice alone)
    out = tmp_path / "out"
    train(_config(synth_corpus, out, epochs=1, precision="fp32"))
    loaded: list[dict] = []
    real_load = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "is_enabled", lambda self: True)
    monkeypatch.setattr(
        torch.amp.GradScaler, "load_state_dict", lambda self, state: loaded.append(state)
    )
    result = train(_config(synth_corpus, out, epochs=1, precision="fp16", resume=True))
    assert result.epochs == 1 and loaded == []
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", real_load)


@pytest.mark.parametrize("frozen", ["vision", "text"])
def test_given_frozen_tower_when_trained_then_its_weights_do_not_change(
    synth_corpus: Path, tiny_model_dir: Path, tmp_path: Path, frozen: str
) -> None:
    flags = {"freeze_vision": frozen == "vision", "freeze_text": frozen == "text"}
    train(_config(synth_corpus, tmp_path / "out", base=str(tiny_model_dir), epochs=1, **flags))
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "out")
    still = (
        ("vision_model.", "visual_projection.")
        if frozen == "vision"
        else ("text_model.", "text_projection.")
    )
    moved = (
        ("text_model.", "text_projection.")
        if frozen == "vision"
        else ("vision_model.", "visual_projection.")
    )
    for prefix in still:
        _assert_same(before, after, prefix)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(moved))


def test_given_high_logit_scale_when_trained_then_clamped_to_ln_100(
    synth_corpus: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bundle = load_clip(str(tiny_model_dir))
    with torch.no_grad():
        bundle.model.logit_scale.fill_(6.0)  # exp(6) ≈ 403, above CLIP's cap of 100
    save_clip(bundle, tmp_path / "hot")
    train(_config(synth_corpus, tmp_path / "out", base=str(tmp_path / "hot"), epochs=1))
    assert float(_weights(tmp_path / "out")["logit_scale"]) <= MAX_LOGIT_SCALE + 1e-6


def _break_one_training_image(manifest: Path) -> str:
    record = next(r for r in read_manifest(manifest) if r.split == "train" and r.caption)
    Path(record.image).write_bytes(b"this is not a PNG")
    return record.image_id


def test_given_unreadable_image_when_trained_then_skipped_and_reported(
    corpus_copy: Path, tmp_path: Path
) -> None:
    broken = _break_one_training_image(corpus_copy)
    # max_samples 0: the whole training set, so the broken record is certainly drawn
    result = train(_config(corpus_copy, tmp_path / "out", epochs=1, max_samples=0))
    report = [
        json.loads(x) for x in (tmp_path / "out" / "bad_records.jsonl").read_text().splitlines()
    ]
    assert [r["image_id"] for r in report] == [broken]
    assert "not a recognised image" in report[0]["reason"]
    assert [b.image_id for b in result.bad_records] == [broken]


def test_given_unreadable_image_and_strict_when_trained_then_stops_with_error(
    corpus_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _break_one_training_image(corpus_copy)
    with pytest.raises(ImageDecodeError, match=broken):
        train(_config(corpus_copy, tmp_path / "out", epochs=1, max_samples=0, strict=True))
    code = main(
        [
            "train",
            "--data",
            str(corpus_copy),
            "--out",
            str(tmp_path / "cli"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--strict",
            "--no-eval-each-epoch",
            "--base",
            "tiny",
        ]
    )
    assert code == 2 and broken in capsys.readouterr().err


def test_given_manifest_without_training_captions_when_trained_then_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image_id": "a", "image": "a.png", "split": "train"}) + "\n")
    code = main(["train", "--data", str(manifest), "--out", str(tmp_path / "o"), "--epochs", "1"])
    assert code == 2 and "no captioned training records" in capsys.readouterr().err


def test_given_plain_adam_flags_when_trained_then_same_weights_as_a_plain_adam_loop(
    synth_corpus: Path, tmp_path: Path
) -> None:
    # The earlier recipe: torch's Adam at a constant 5e-5, no decay, no warm-up, no clipping.
    # A plain loop over the same batches must give bit-identical weights.
    from medsearch.train.data import Collate, PairDataset, epoch_order
    from medsearch.train.loop import contrastive_loss

    flags = {"optimizer": "adam", "weight_decay": 0.0, "schedule": "constant", "lr": 5e-5}
    options = {**flags, "epochs": 2, "augment": False, "caption_dropout": 0.0}
    result = train(_config(synth_corpus, tmp_path / "out", **options))
    assert {row["lr"] for row in result.history} == {5e-5}

    records = split_records(read_manifest(synth_corpus))[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run did: the sums' order decides the last bits
    torch.manual_seed(0)
    bundle = build_tiny_clip([r.caption or "" for r in records], seed=0)
    model = bundle.model
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    dataset = PairDataset(records, bundle.image_processor)
    collate = Collate(bundle.tokenizer, bundle.max_text_length)
    for epoch in range(2):
        order = epoch_order(len(records), seed=0, epoch=epoch, exclude=set(), limit=32)
        for start in range(0, len(order) - 15, 16):
            batch = collate([dataset[i] for i in order[start : start + 16]])
            output = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                pixel_values=batch.pixel_values,
            )
            loss = contrastive_loss(output.logits_per_text.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    torch.set_num_threads(threads)
    _assert_same(model.state_dict(), _weights(tmp_path / "out"))
