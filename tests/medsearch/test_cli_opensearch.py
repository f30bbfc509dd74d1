"""`medsearch load`, and `search` / `evaluate-search` on an OpenSearch alias, via ``main([...])``.

The live tests run against the suite's OpenSearch node (``opensearch_url`` in tests/conftest.py)
or the cluster named by ``MEDSEARCH_OPENSEARCH_URL``. One vectorized synthetic corpus serves the
whole module; every alias made here is named ``medsearch-test-*`` and its run indexes are deleted
afterwards. The tests without a cluster use the in-memory fake (for faults a real node does not
make on demand) or a stand-in HTTP server that refuses everyone.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medsearch.cli import PASSWORD_ENV, main
from medsearch.data.manifest import read_manifest
from medsearch.index.base import IndexModel
from medsearch.index.opensearch import OpenSearchIndex
from medsearch.relevance import VectorFloor
from tests.support.cli_output import one_line_error
from tests.support.fake_opensearch import FakeCluster, SimulatedCrash, fake_client

QUERY = "chest nodule"
live = pytest.mark.live


@dataclass(frozen=True)
class Run:
    """What one ``main([...])`` call did: exit status and its output."""

    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Run:
    """Run the CLI outside capsys (module fixtures): its exit status and both outputs."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Run(code, out.getvalue(), err.getvalue())


def fresh_alias() -> str:
    return f"medsearch-test-{uuid.uuid4().hex[:10]}"


def run_indexes(client: Any, alias: str) -> list[str]:
    """The physical run indexes of ``alias`` on the cluster."""
    return sorted(OpenSearchIndex(client, alias).creation_dates(f"{alias}-*"))


def drop_runs(client: Any, alias: str) -> None:
    for name in run_indexes(client, alias):
        OpenSearchIndex(client, name).drop()


def load_argv(url: str, manifest: Path, vectors: Path, alias: str, *extra: str) -> list[str]:
    """A `medsearch load` command line (no replicas: the test node is a single node)."""
    return [
        "load", "--data", str(manifest), "--vectors", str(vectors),
        "--opensearch-url", url, "--alias", alias, "--replicas", "0", *extra,
    ]  # fmt: skip


def write_jsonl_vectors(
    folder: Path, ids: list[str], vectors: np.ndarray | list[list[float]]
) -> Path:
    """A vectors folder in the batch-transform shape (``{"image_id", "vector"}`` lines)."""
    folder.mkdir(parents=True)
    lines = [
        json.dumps({"image_id": i, "vector": [float(x) for x in v]})
        for i, v in zip(ids, vectors, strict=True)
    ]
    (folder / "vectors.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- module fixtures: one vectorized corpus, one embedded index, one loaded alias ---------------


@pytest.fixture(scope="module")
def vectors_dir(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, tiny_model_dir: Path
) -> Path:
    """`medsearch vectorize` of the synthetic corpus with the tiny model."""
    out = tmp_path_factory.mktemp("cli-os-vectors")
    argv = ["vectorize", "--model", str(tiny_model_dir), "--data", str(synth_corpus)]
    run = run_cli([*argv, "--out", str(out)])
    assert run.code == 0, run.err
    return out


@pytest.fixture(scope="module")
def embedded_dir(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, vectors_dir: Path
) -> Path:
    """The same corpus and vectors in the embedded engine: the reference for cosine rankings."""
    out = tmp_path_factory.mktemp("cli-os-embedded")
    argv = ["index", "--data", str(synth_corpus), "--vectors", str(vectors_dir)]
    run = run_cli([*argv, "--index", str(out)])
    assert run.code == 0, run.err
    return out


@pytest.fixture(scope="module")
def loaded(
    opensearch_url: str, opensearch_client: Any, synth_corpus: Path, vectors_dir: Path
) -> Iterator[tuple[str, Run]]:
    """An alias loaded once by `medsearch load --run-id r1`: (alias, what the command did)."""
    alias = fresh_alias()
    try:
        run = run_cli(load_argv(opensearch_url, synth_corpus, vectors_dir, alias, "--run-id", "r1"))
        assert run.code == 0, run.err
        yield alias, run
    finally:
        drop_runs(opensearch_client, alias)


@pytest.fixture
def alias(opensearch_client: Any) -> Iterator[str]:
    """A fresh alias for one test; its run indexes are deleted afterwards."""
    name = fresh_alias()
    yield name
    drop_runs(opensearch_client, name)


# --- load --------------------------------------------------------------------------------------


@live
def test_given_vectors_when_loading_then_the_alias_serves_every_record(
    loaded: tuple[str, Run], opensearch_client: Any, synth_corpus: Path, vectors_dir: Path
) -> None:
    alias, run = loaded
    records = read_manifest(synth_corpus)
    dim = json.loads((vectors_dir / "meta.json").read_text())["dim"]
    # Then the command said what it did
    assert f"indexed {len(records)} documents into {alias}-r1" in run.out
    assert f"alias {alias} -> {alias}-r1 (was unset)" in run.out
    assert "deleted old runs: none" in run.out
    # and the alias points at the run index, which holds every record with its vector
    reader = OpenSearchIndex(opensearch_client, alias)
    assert reader.alias_targets(alias) == [f"{alias}-r1"]
    assert reader.count() == len(records) and reader.dim == dim
    # and the index records the vectors' model and weights, for the service's model check,
    # and their calibrated vector floor
    meta = json.loads((vectors_dir / "meta.json").read_text())
    assert meta["fingerprint"]
    floor = VectorFloor.from_json(meta["vector_floor"], dim)
    assert floor is not None
    assert OpenSearchIndex(opensearch_client, f"{alias}-r1").indexed_model() == IndexModel(
        meta["model"], meta["fingerprint"], floor
    )
    first = reader.get(records[0].image_id)
    assert first is not None and first.caption == records[0].caption
    assert dict(first.metadata) == dict(records[0].metadata) and first.vector is not None
    # and the bulk-load settings were put back (replicas as asked, refresh on again)
    settings = opensearch_client.indices.get_settings(index=f"{alias}-r1")
    index_settings = settings[f"{alias}-r1"]["settings"]["index"]
    assert index_settings["number_of_replicas"] == "0"
    assert index_settings["refresh_interval"] == "1s"


@live
def test_given_a_live_alias_when_loading_again_then_it_swaps_and_prunes(
    alias: str, opensearch_url: str, opensearch_client: Any, synth_corpus: Path, vectors_dir: Path
) -> None:
    # Given a first run published under its default run id (the UTC time)
    first = run_cli(load_argv(opensearch_url, synth_corpus, vectors_dir, alias))
    assert first.code == 0, first.err
    (first_index,) = run_indexes(opensearch_client, alias)
    assert re.fullmatch(rf"{alias}-\d{{8}}-\d{{6}}", first_index)
    # When a second run is loaded, keeping one run
    second = run_cli(
        load_argv(opensearch_url, synth_corpus, vectors_dir, alias, "--run-id", "r2", "--keep", "1")
    )
    # Then the alias moved to it and the first run index is gone
    assert second.code == 0, second.err
    assert f"alias {alias} -> {alias}-r2 (was {first_index})" in second.out
    assert f"deleted old runs: {first_index}" in second.out
    assert run_indexes(opensearch_client, alias) == [f"{alias}-r2"]
    reader = OpenSearchIndex(opensearch_client, alias)
    assert reader.alias_targets(alias) == [f"{alias}-r2"]
    assert reader.count() == len(read_manifest(synth_corpus))


@live
def test_given_a_run_id_in_use_when_loading_then_the_live_run_is_left_alone(
    loaded: tuple[str, Run],
    opensearch_url: str,
    opensearch_client: Any,
    synth_corpus: Path,
    vectors_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alias, _ = loaded
    argv = load_argv(opensearch_url, synth_corpus, vectors_dir, alias, "--run-id", "r1")
    assert main(argv) == 2
    assert "already exists: give another --run-id" in one_line_error(
        capsys.readouterr().err, "load"
    )
    reader = OpenSearchIndex(opensearch_client, alias)
    assert reader.alias_targets(alias) == [f"{alias}-r1"]
    assert reader.count() == len(read_manifest(synth_corpus))


@live
@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        # One vector of the wrong length among good ones: nothing is created.
        ("mixed_dims", "vectors of different lengths"),
        # A zero vector cannot be indexed: the run is refused and its index deleted.
        ("zero_vector", "1 documents failed (first: "),
    ],
)
def test_given_unusable_vectors_when_loading_then_one_line_and_no_alias(
    alias: str,
    opensearch_url: str,
    opensearch_client: Any,
    synth_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    vectors: str,
    message: str,
) -> None:
    ids = [r.image_id for r in read_manifest(synth_corpus)]
    rows = np.random.default_rng(0).normal(size=(len(ids), 8)).tolist()
    if vectors == "mixed_dims":
        rows[5] = rows[5][:7]
    else:
        rows[5] = [0.0] * 8
    folder = write_jsonl_vectors(tmp_path / vectors, ids, rows)
    assert main(load_argv(opensearch_url, synth_corpus, folder, alias)) == 2
    err = one_line_error(capsys.readouterr().err, "load")
    assert message in err
    if vectors == "zero_vector":
        assert f"{ids[5]}: vector is all zeros" in err and f"alias {alias} not changed" in err
    assert OpenSearchIndex(opensearch_client, alias).alias_targets(alias) == []
    assert run_indexes(opensearch_client, alias) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:9200", "OpenSearch URL must be http(s)://host[:port]"),
        ("localhost:9200", "OpenSearch URL must be http(s)://host[:port]"),
        (None, "failed after 1 attempts: connection error"),  # nothing listens there
    ],
)
def test_given_a_bad_cluster_url_when_loading_then_one_line_and_exit_2(
    synth_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    url: str | None,
    message: str,
) -> None:
    ids = [r.image_id for r in read_manifest(synth_corpus)]
    folder = write_jsonl_vectors(tmp_path / "v", ids, np.ones((len(ids), 4)))
    url = url or f"http://127.0.0.1:{free_port()}"
    assert main(load_argv(url, synth_corpus, folder, "medsearch-test-nowhere")) == 2
    assert message in one_line_error(capsys.readouterr().err, "load")


# --- faults of a cluster mid-load (the in-memory fake) ------------------------------------------


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """An in-memory cluster that `medsearch load` connects to whatever the URL."""
    cluster = FakeCluster()
    monkeypatch.setattr(
        "medsearch.index.opensearch.connect", lambda url, **kwargs: fake_client(cluster)
    )
    return cluster


def test_given_pruning_fails_after_the_swap_when_loading_then_the_error_says_the_run_is_live(
    fake_cluster: FakeCluster,
    synth_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [r.image_id for r in read_manifest(synth_corpus)]
    folder = write_jsonl_vectors(tmp_path / "v", ids, np.ones((len(ids), 4)))
    url = "http://cluster:9200"
    assert main(load_argv(url, synth_corpus, folder, "ms", "--run-id", "r1")) == 0
    # When the second run is published but deleting the first one is refused
    fake_cluster.fail_requests(status=403, path="ms-r1", method="DELETE")
    assert main(load_argv(url, synth_corpus, folder, "ms", "--run-id", "r2", "--keep", "1")) == 2
    # Then the error says the new run is live, and it is kept
    err = one_line_error(capsys.readouterr().err, "load")
    assert "ms-r2 is live behind ms, but: " in err and "403" in err
    assert fake_cluster.aliases["ms"] == {"ms-r2"} and "ms-r2" in fake_cluster.indexes


def test_given_a_crash_mid_load_when_loading_then_the_run_index_is_deleted(
    fake_cluster: FakeCluster, synth_corpus: Path, tmp_path: Path
) -> None:
    ids = [r.image_id for r in read_manifest(synth_corpus)]
    folder = write_jsonl_vectors(tmp_path / "v", ids, np.ones((len(ids), 4)))
    fake_cluster.crash_after(0)  # the first bulk request
    with pytest.raises(SimulatedCrash):
        main(load_argv("http://cluster:9200", synth_corpus, folder, "ms", "--run-id", "r1"))
    assert "ms-r1" not in fake_cluster.indexes and "ms" not in fake_cluster.aliases


def small_run(folder: Path, n: int) -> tuple[Path, Path]:
    """A manifest of ``n`` captioned records and batch-transform vectors for them."""
    folder.mkdir(parents=True)
    ids = [f"img-{i}" for i in range(n)]
    rows = [{"image_id": i, "image": f"{i}.png", "caption": f"CT chest {i}"} for i in ids]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    rng = np.random.default_rng(n)
    return manifest, write_jsonl_vectors(folder / "v", ids, rng.normal(size=(n, 4)) + 0.1)


@live
def test_given_a_live_alias_when_loading_an_empty_or_much_smaller_run_then_refused_unless_asked(
    alias: str,
    opensearch_url: str,
    opensearch_client: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an alias serving 10 documents
    full = small_run(tmp_path / "full", 10)
    assert main(load_argv(opensearch_url, *full, alias, "--run-id", "r1")) == 0
    capsys.readouterr()
    reader = OpenSearchIndex(opensearch_client, alias)
    # When an empty manifest, or one with half the records, is loaded
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(load_argv(opensearch_url, empty, full[1], alias, "--run-id", "r2")) == 2
    assert "--allow-empty" in one_line_error(capsys.readouterr().err, "load")
    half = small_run(tmp_path / "half", 5)
    assert main(load_argv(opensearch_url, *half, alias, "--run-id", "r3")) == 2
    line = one_line_error(capsys.readouterr().err, "load")
    # Then nothing was created and the alias still serves the 10
    assert f"alias {alias} ({alias}-r1) holds 10" in line and "--force" in line
    assert run_indexes(opensearch_client, alias) == [f"{alias}-r1"]
    assert reader.alias_targets(alias) == [f"{alias}-r1"] and reader.count() == 10
    # And --force publishes the smaller run on purpose
    assert main(load_argv(opensearch_url, *half, alias, "--run-id", "r4", "--force")) == 0
    assert reader.alias_targets(alias) == [f"{alias}-r4"] and reader.count() == 5


@live
def test_given_a_huge_caption_when_loading_then_the_cluster_stores_it_cut_with_its_size(
    alias: str, opensearch_url: str, opensearch_client: Any, tmp_path: Path
) -> None:
    # Given a manifest whose first caption is 3 MB
    manifest, vectors = small_run(tmp_path / "run", 3)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    huge = "pleural effusion " * 180_000
    rows[0]["caption"] = huge
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # When it is loaded
    run = run_cli(load_argv(opensearch_url, manifest, vectors, alias))
    # Then the stored caption is cut to 16 KiB, its original size kept, and the summary says so
    assert run.code == 0, run.err
    assert "captions cut to 16 KiB: 1" in run.out
    stored = OpenSearchIndex(opensearch_client, alias).get("img-0")
    assert stored is not None and stored.caption is not None
    assert 15 * 1024 < len(stored.caption.encode()) <= 16 * 1024
    assert huge.startswith(stored.caption)
    assert stored.metadata["caption_original_bytes"] == len(huge.strip().encode())


# --- search / evaluate-search on the alias -----------------------------------------------------


def cluster_argv(url: str, alias: str) -> list[str]:
    return ["--opensearch-url", url, "--opensearch-index", alias]


@live
def test_given_a_loaded_alias_when_searching_text_then_a_table_of_hits(
    loaded: tuple[str, Run], opensearch_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alias, _ = loaded
    assert (
        main(["search", *cluster_argv(opensearch_url, alias), "--mode", "text", "-k", "5", QUERY])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    header = re.match(r"(\d+) matches · mode text · results 1-(\d+) · ", out[0])
    assert header and int(header.group(1)) > 0, out[0]
    assert out[1].split() == ["#", "score", "bm25", "cosine", "image_id", "caption"]
    rows = [line.split() for line in out[2:]]
    assert len(rows) == int(header.group(2)) == min(5, int(header.group(1)))
    assert all(float(row[2]) > 0 and row[3] == "-" for row in rows)  # BM25 only, no cosine


@live
def test_given_a_loaded_alias_when_searching_by_vector_then_it_ranks_like_the_embedded_index(
    loaded: tuple[str, Run],
    embedded_dir: Path,
    opensearch_url: str,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alias, _ = loaded
    model = ["--model", str(tiny_model_dir), "--json", "-k", "10"]
    bodies = {}
    for engine, where in (
        ("opensearch", cluster_argv(opensearch_url, alias)),
        ("embedded", ["--index", str(embedded_dir)]),
    ):
        assert main(["search", *where, *model, "--mode", "vector", QUERY]) == 0
        bodies[engine] = json.loads(capsys.readouterr().out)
    # Same vectors, same cosine: the same images in the same order with the same scores
    ours, reference = bodies["opensearch"]["results"], bodies["embedded"]["results"]
    assert [r["image_id"] for r in ours] == [r["image_id"] for r in reference]
    assert np.allclose(
        [r["vector_score"] for r in ours], [r["vector_score"] for r in reference], atol=1e-4
    )
    # and the default mode with a model is hybrid, through the cluster's search pipeline
    assert (
        main(["search", *cluster_argv(opensearch_url, alias), *model, "--alpha", "0.3", QUERY]) == 0
    )
    hybrid = json.loads(capsys.readouterr().out)
    assert hybrid["mode"] == "hybrid" and hybrid["alpha"] == 0.3 and len(hybrid["results"]) == 10
    assert any(r["bm25_score"] is not None for r in hybrid["results"])
    assert any(r["vector_score"] is not None for r in hybrid["results"])


@live
def test_given_a_loaded_alias_when_evaluating_search_then_every_mode_is_scored(
    loaded: tuple[str, Run],
    embedded_dir: Path,
    opensearch_url: str,
    tiny_model_dir: Path,
    synth_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alias, _ = loaded
    queries = synth_corpus.parent / "queries.jsonl"
    n_queries = len(queries.read_text().splitlines())
    base = ["evaluate-search", "--model", str(tiny_model_dir), "--queries", str(queries)]
    argv = [*base, *cluster_argv(opensearch_url, alias), "--out", str(tmp_path / "os.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{n_queries} queries, k=10, hybrid alpha 0.5")
    report = json.loads((tmp_path / "os.json").read_text())
    assert set(report["modes"]) == {"text", "vector", "hybrid"}
    assert all(0 <= row["ndcg@10"] <= 1 for row in report["modes"].values())
    # The vector mode scores exactly as on the embedded index of the same vectors
    assert (
        main([*base, "--index", str(embedded_dir), "--out", str(tmp_path / "embedded.json")]) == 0
    )
    capsys.readouterr()
    reference = json.loads((tmp_path / "embedded.json").read_text())
    for metric in ("ndcg@10", "r@10"):
        assert report["modes"]["vector"][metric] == pytest.approx(
            reference["modes"]["vector"][metric], abs=1e-6
        )


@live
def test_given_an_alias_of_other_vectors_when_searching_with_the_model_then_one_line(
    alias: str,
    opensearch_url: str,
    synth_corpus: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an alias loaded with 8-d vectors (another model's)
    ids = [r.image_id for r in read_manifest(synth_corpus)]
    folder = write_jsonl_vectors(
        tmp_path / "v8", ids, np.random.default_rng(1).normal(size=(len(ids), 8))
    )
    assert main(load_argv(opensearch_url, synth_corpus, folder, alias)) == 0
    capsys.readouterr()
    # When searching it with the tiny model, Then the mismatch is one line
    argv = ["search", *cluster_argv(opensearch_url, alias), "--model", str(tiny_model_dir), QUERY]
    assert main(argv) == 2
    assert "holds 8-d vectors" in one_line_error(capsys.readouterr().err, "search")


@live
def test_given_an_alias_that_does_not_exist_when_searching_then_one_line(
    opensearch_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", *cluster_argv(opensearch_url, fresh_alias()), "--mode", "text", QUERY]
    assert main(argv) == 2
    assert "404" in one_line_error(capsys.readouterr().err, "search")


NOWHERE = ["--opensearch-url", "http://127.0.0.1:9"]  # never reached: the options fail first
ONLY_WITH_URL = "only with --opensearch-url, not with --index"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--opensearch-url", "ftp://h:9200", QUERY], "OpenSearch URL must be http(s)"),
        (["search", "--index", "ix", "--opensearch-index", "a", QUERY], ONLY_WITH_URL),
        (["search", "--index", "ix", "--opensearch-username", "u", QUERY], ONLY_WITH_URL),
        (["search", *NOWHERE, "--opensearch-auth", "basic", QUERY], "needs a user name"),
        (["serve", *NOWHERE, "--opensearch-username", "u", "--model", "m"], PASSWORD_ENV),
        (["load", *NOWHERE, "--opensearch-username", "u", "--data", "m", "--vectors", "v"],
         PASSWORD_ENV),
    ],
)  # fmt: skip
def test_given_bad_cluster_options_when_running_then_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert main(argv) == 2
    assert message in one_line_error(capsys.readouterr().err, argv[0])


def test_given_index_and_cluster_together_when_parsing_then_argparse_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", "ix", "--opensearch-url", "http://localhost:9200", QUERY])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- basic auth on the wire (a stand-in server that refuses everyone) -------------------------


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, list[str | None]]]:
    """An HTTP server answering 401 to every request; yields its URL and the Authorization
    headers it saw."""
    seen: list[str | None] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b'{"error":"unauthorized","status":401}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _refuse

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("command", ["load", "search"])
def test_given_basic_auth_when_the_cluster_refuses_then_the_env_password_was_sent_and_one_line(
    refusing_server: tuple[str, list[str | None]],
    monkeypatch: pytest.MonkeyPatch,
    synth_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    url, seen = refusing_server
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    auth = ["--opensearch-url", url, "--opensearch-username", "ops"]
    if command == "load":
        ids = [r.image_id for r in read_manifest(synth_corpus)]
        folder = write_jsonl_vectors(tmp_path / "v", ids, np.ones((len(ids), 4)))
        argv = ["load", "--data", str(synth_corpus), "--vectors", str(folder), *auth]
    else:
        argv = ["search", *auth, "--mode", "text", QUERY]
    assert main(argv) == 2
    assert "401" in one_line_error(capsys.readouterr().err, command)
    assert seen and set(seen) == {"Basic " + base64.b64encode(b"ops:s3cret").decode()}
