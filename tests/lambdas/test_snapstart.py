"""SnapStart hooks of the search API Lambda, driven the way the runtime drives them.

``snapshot_restore_py`` exists only inside the Lambda runtime: a fake module stands in for it and
records what the handler registers; a test then runs the before-snapshot hooks (the version being
published), changes what a restored copy would see (credentials, time), runs the after-restore
hooks and sends API Gateway events.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from opensearchpy import OpenSearch

from lambdas import opensearch_client
from medsearch import storage
from medsearch.errors import ConfigError
from medsearch.model.onnx_encoder import MANIFEST_FILE, TEXT_MODEL, OnnxEncoder
from tests.lambdas.test_search_api import call, http_api_event, populate
from tests.support.fake_opensearch import FakeCluster, FakeConnection, fake_client

REGION = "eu-west-1"
HANDLER = "lambdas.search_api.handler"


class FakeSnapshotRestore(ModuleType):
    """Stands in for the runtime's ``snapshot_restore_py``: keeps the registered hooks."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.before: list[Callable[[], None]] = []
        self.after: list[Callable[[], None]] = []

    def register_before_snapshot(self, hook: Callable[[], None]) -> None:
        self.before.append(hook)

    def register_after_restore(self, hook: Callable[[], None]) -> None:
        self.after.append(hook)

    def snapshot(self) -> None:
        """What Lambda runs before the snapshot: the hooks in reverse order of registration."""
        for hook in reversed(self.before):
            hook()

    def restore(self) -> None:
        """What Lambda runs in a restored copy: the hooks in order of registration."""
        for hook in self.after:
            hook()


class SigningConnection(FakeConnection):
    """A fake-cluster connection that keeps the auth the client was given (SigV4 here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.auth = kwargs.get("http_auth")
        self.closed = False
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from medsearch.model.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("snapstart-onnx") / "onnx"
    export_onnx(str(tiny_model_dir), out, exporter="torchscript", model_id="tiny-snapstart")
    return out


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeSnapshotRestore:
    """The Lambda runtime's hook module, importable as ``snapshot_restore_py``."""
    fake = FakeSnapshotRestore()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    return fake


@pytest.fixture
def cluster(onnx_dir: Path, synth_corpus: Path) -> FakeCluster:
    cluster = FakeCluster(seed=5)
    populate(cluster, OnnxEncoder(onnx_dir), synth_corpus)
    return cluster


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, s3_bucket: str, onnx_dir: Path, tmp_path: Path
) -> Iterator[Path]:
    """The function's environment (model in moto S3, SigV4 to the domain); yields /tmp's cache."""
    import logging

    storage.upload_dir(onnx_dir, f"s3://{s3_bucket}/models/run-1/onnx")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_URL", "https://search-medsearch.example.com")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_AUTH", "sigv4")
    monkeypatch.setenv("MEDSEARCH_AWS_REGION", REGION)
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_INDEX", "medsearch")
    monkeypatch.setenv("MEDSEARCH_MODEL", f"s3://{s3_bucket}/models/run-1/onnx/")
    core = logging.getLogger("medsearch")  # the handler routes it through Powertools; undo after
    for attribute in ("propagate", "handlers", "level"):
        monkeypatch.setattr(core, attribute, getattr(core, attribute))
    yield tmp_path / "tmp-model"


def credentials(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """The execution environment's role credentials, as the runtime exposes them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-of-{key}")
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"token-of-{key}")


def signed_key(client: OpenSearch) -> str:
    """The access key the client's SigV4 auth signs a request with."""
    connection = client.transport.connection_pool.connections[0]
    request = requests.Request("GET", "https://search-medsearch.example.com/medsearch/_search")
    signed = connection.auth(request.prepare())
    header = signed.headers["Authorization"]
    return str(header.split("Credential=")[1].split("/")[0])


def sent(client: OpenSearch) -> int:
    """How many requests went through the client (its fake cluster counts none per client)."""
    return int(getattr(client, "requests_sent", 0))


def counting(client: OpenSearch) -> OpenSearch:
    """Count the requests the client's transport performs."""
    perform = client.transport.perform_request

    def perform_counted(*args: Any, **kwargs: Any) -> Any:
        client.requests_sent = sent(client) + 1  # type: ignore[attr-defined]
        return perform(*args, **kwargs)

    client.transport.perform_request = perform_counted  # type: ignore[method-assign]
    return client


class Clients(list[OpenSearch]):
    """The clients the handler made, through the real SigV4 path, answered by the fake cluster."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__()
        self.cluster = cluster

    def make(self, settings: Any) -> OpenSearch:
        """The handler's ``make_client`` for these tests."""
        client = opensearch_client(
            settings.opensearch_url,
            auth="sigv4",
            region=settings.aws_region,
            connection_class=SigningConnection,
            cluster=self.cluster,
        )
        self.append(counting(client))
        return client


@pytest.fixture
def made(cluster: FakeCluster) -> Clients:
    return Clients(cluster)


def init(monkeypatch: pytest.MonkeyPatch, cache: Path) -> ModuleType:
    """Import the handler module once, afresh, as the runtime does in its init phase."""
    # The fresh import also rebinds the package's `handler` attribute: put both back afterwards,
    # or later `import lambdas.search_api.handler` finds a module sys.modules does not know.
    package = importlib.import_module(HANDLER.rsplit(".", 1)[0])
    monkeypatch.setattr(package, "handler", getattr(package, "handler", None), raising=False)
    monkeypatch.delitem(sys.modules, HANDLER, raising=False)
    handler = importlib.import_module(HANDLER)
    monkeypatch.setattr(handler, "MODEL_CACHE", cache)
    return handler


def start(monkeypatch: pytest.MonkeyPatch, cache: Path, made: Clients) -> ModuleType:
    """The handler after its init, making its clients with ``made``."""
    handler = init(monkeypatch, cache)
    monkeypatch.setattr(handler, "make_client", made.make)
    return handler


def test_given_the_runtime_module_then_the_handler_registers_both_hooks(
    runtime: FakeSnapshotRestore, monkeypatch: pytest.MonkeyPatch, env: Path
) -> None:
    handler = init(monkeypatch, env)
    assert runtime.before == [handler.before_snapshot]
    assert runtime.after == [handler.after_restore]


def test_given_no_runtime_module_then_the_handler_imports_and_registers_nothing(
    monkeypatch: pytest.MonkeyPatch, env: Path
) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails
    handler = init(monkeypatch, env)
    assert handler.snapshot_restore_py is None and handler.register_snapstart_hooks() is False


def test_given_the_snapshot_then_the_service_is_built_before_it(
    runtime: FakeSnapshotRestore,
    monkeypatch: pytest.MonkeyPatch,
    env: Path,
    made: Clients,
    s3_bucket: str,
) -> None:
    credentials(monkeypatch, "AKIDPUBLISH")
    handler = start(monkeypatch, env, made)
    assert made == [] and not env.exists()  # importing the handler builds nothing
    # When Lambda publishes the version and runs the hooks before the snapshot
    runtime.snapshot()
    # Then the model is in /tmp and the engine built
    assert list(env.rglob(MANIFEST_FILE)) and list(env.rglob(TEXT_MODEL))
    assert len(made) == 1 and handler.ENGINES
    # And a request needs neither the model in S3 nor a new client
    store = storage.object_store()
    for key in list(store.list(s3_bucket, "models/")):
        store._client.delete_object(Bucket=s3_bucket, Key=key)  # type: ignore[attr-defined]
    status, _, body = call(handler, http_api_event("/search", {"q": "lung", "mode": "vector"}))
    assert status == 200 and body["results"], body
    assert len(made) == 1


def test_given_a_restore_then_the_client_its_pool_and_its_credentials_are_new(
    runtime: FakeSnapshotRestore, monkeypatch: pytest.MonkeyPatch, env: Path, made: Clients
) -> None:
    # Given a snapshot taken with the publishing environment's credentials
    credentials(monkeypatch, "AKIDPUBLISH")
    handler = start(monkeypatch, env, made)
    runtime.snapshot()
    before = made[0]
    assert signed_key(before) == "AKIDPUBLISH"
    # When a copy is restored where the role's credentials are others
    credentials(monkeypatch, "AKIDRESTORED")
    runtime.restore()
    # Then the engine has a new client, signing with the restored copy's credentials
    assert len(made) == 2 and made[1] is not before
    assert signed_key(made[1]) == "AKIDRESTORED"
    # and the snapshot's pooled connections are closed
    assert [c.closed for c in before.transport.connection_pool.connections] == [True]
    # And the handler still answers, through the new client only
    sent_before = sent(before)
    status, _, body = call(handler, http_api_event("/search", {"q": "nodule", "mode": "hybrid"}))
    assert status == 200 and len(body["results"]) == 10, body
    assert sent(made[1]) > 0 and sent(before) == sent_before


def test_given_a_restore_then_the_retry_jitter_is_reseeded_and_s3_reconnected(
    runtime: FakeSnapshotRestore, monkeypatch: pytest.MonkeyPatch, env: Path, made: Clients
) -> None:
    start(monkeypatch, env, made)
    runtime.snapshot()
    s3_before = storage.object_store()
    # Copies restored from one snapshot share its random state: without a reseed, each would
    # draw exactly this value for its first back-off
    random.seed(1234)
    shared_draw = random.Random(1234).random()
    runtime.restore()
    assert random.random() != shared_draw
    assert storage.object_store() is not s3_before


def test_given_no_service_before_the_snapshot_then_a_restored_copy_builds_it_at_once(
    runtime: FakeSnapshotRestore,
    monkeypatch: pytest.MonkeyPatch,
    env: Path,
    made: Clients,
    cluster: FakeCluster,
) -> None:
    handler = start(monkeypatch, env, made)

    def unreachable(settings: Any) -> OpenSearch:
        raise ConnectionError("the domain is not reachable while the version is published")

    # Given the build failed before the snapshot (the hook logs it: publishing goes on)
    monkeypatch.setattr(handler, "make_client", unreachable)
    runtime.snapshot()
    assert not handler.ENGINES
    # When a copy is restored where the domain answers
    monkeypatch.setattr(handler, "make_client", lambda settings: fake_client(cluster))
    runtime.restore()
    # Then its first request builds the service and answers (no 503 held over from publishing)
    status, _, body = call(handler, http_api_event("/health"))
    assert status == 200 and body["model"] == "tiny-snapstart", body


def test_given_no_credentials_at_restore_then_the_restore_succeeds_and_requests_rebuild(
    runtime: FakeSnapshotRestore, monkeypatch: pytest.MonkeyPatch, env: Path, made: Clients
) -> None:
    handler = start(monkeypatch, env, made)
    runtime.snapshot()
    assert len(made) == 1

    def no_credentials(settings: Any) -> OpenSearch:
        raise ConfigError("SigV4 auth needs AWS credentials (none found)")

    # When the restored copy cannot make a client, the hook does not fail the restore
    monkeypatch.setattr(handler, "make_client", no_credentials)
    runtime.restore()
    status, _, body = call(handler, http_api_event("/health"))
    assert status == 503 and "credentials" in str(body), body
    # And once credentials are there, a request builds the service with a new client
    monkeypatch.setattr(handler, "make_client", made.make)
    monkeypatch.setattr("medsearch.api.RETRY_START_SECONDS", 0.0)
    status, _, body = call(handler, http_api_event("/health"))
    assert status == 200 and len(made) == 2, body
