"""The search Lambda's live-model pointer: ``MEDSEARCH_MODEL=s3://…/models/live.json``, written by
the pipeline when it publishes a run, names the ONNX folder to serve (moto S3)."""

from __future__ import annotations

import json

import pytest

import lambdas.search_api.handler as handler
from medsearch import storage
from medsearch.errors import ConfigError
from medsearch.settings import ServiceSettings


def test_no_pointer_yet_means_text_search_only(s3_bucket: str) -> None:
    settings = ServiceSettings(model=f"s3://{s3_bucket}/models/live.json")
    assert handler.resolve_model(settings).model is None


def test_the_pointer_names_the_model_and_a_plain_model_passes_through(s3_bucket: str) -> None:
    pointer = f"s3://{s3_bucket}/models/live.json"
    model = f"s3://{s3_bucket}/models/run-2/onnx"
    storage.write_text(pointer, json.dumps({"run": "run-2", "model": model}))
    assert handler.resolve_model(ServiceSettings(model=pointer)).model == model
    assert handler.resolve_model(ServiceSettings(model=model)).model == model


@pytest.mark.parametrize("body", ["not json", json.dumps({"run": "r"}), json.dumps(["x"])])
def test_a_pointer_without_a_model_is_a_clear_error(s3_bucket: str, body: str) -> None:
    pointer = f"s3://{s3_bucket}/models/live.json"
    storage.write_text(pointer, body)
    with pytest.raises(ConfigError, match="live model pointer"):
        handler.resolve_model(ServiceSettings(model=pointer))


def test_a_restored_copy_sees_a_model_published_after_its_snapshot(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pointer = f"s3://{s3_bucket}/models/live.json"
    storage.write_text(pointer, json.dumps({"model": "s3://b/models/run-1/onnx"}))
    monkeypatch.setattr(handler, "SETTINGS", ServiceSettings(model=pointer))
    monkeypatch.setattr(handler, "LOADED_MODEL", ["s3://b/models/run-1/onnx"])
    assert handler.model_changed() is False
    storage.write_text(pointer, json.dumps({"model": "s3://b/models/run-2/onnx"}))
    assert handler.model_changed() is True


def test_after_restore_rebuilds_when_the_live_model_changed(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medsearch.api import LazyService

    pointer = f"s3://{s3_bucket}/models/live.json"
    storage.write_text(pointer, json.dumps({"model": "s3://b/models/run-2/onnx"}))
    monkeypatch.setattr(handler, "SETTINGS", ServiceSettings(model=pointer))
    monkeypatch.setattr(handler, "LOADED_MODEL", ["s3://b/models/run-1/onnx"])
    reconnected: list[object] = []

    class Engine:
        def reconnect(self, client: object) -> None:
            reconnected.append(client)

    monkeypatch.setattr(handler, "ENGINES", [Engine()])
    monkeypatch.setattr(handler, "make_client", lambda settings: "new client")
    built = object()
    monkeypatch.setattr(handler.app.state, "service_provider", lambda: built)
    handler.after_restore()
    # The old model's service is dropped, not reconnected: the first request builds the new one.
    assert handler.ENGINES == [] and reconnected == []
    assert isinstance(handler.app.state.service_provider, LazyService)
