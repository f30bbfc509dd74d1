"""`medsearch ...`: the command line over the core.

Each subcommand has an ``_add_<name>`` function (its arguments) and a ``_run_<name>`` function
(read the arguments once into the core's config objects and call the core). Heavy imports (torch,
the engines) happen inside the ``_run_`` functions, so ``medsearch --help`` is instant.
Errors the user can fix end as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsearch import __version__
from medsearch.errors import MedsearchError

if TYPE_CHECKING:
    from medsearch.index.opensearch import OpenSearchIndex
    from medsearch.pipeline_runs import Execution, PipelineClient
    from medsearch.publish_guard import PublishGuardConfig
    from medsearch.settings import ServiceSettings

log = logging.getLogger("medsearch")

Handler = Callable[[argparse.Namespace], int]
# The password of basic auth comes from the environment only: a flag would show in `ps`.
PASSWORD_ENV = "MEDSEARCH_OPENSEARCH_PASSWORD"  # noqa: S105 (the variable's name)


# --- synth / import ------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic captioned corpus with a query set")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n", type=int, default=None, help="number of images (default: the demo size)")
    p.add_argument("--seed", type=int, default=0, help="seed of images, captions and queries")
    p.add_argument(
        "--captionless", type=float, default=None, help="fraction of images without a caption"
    )
    p.add_argument("--image-size", type=int, default=None, help="edge length in pixels")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from medsearch.data.synth import SynthConfig, write_synthetic_corpus

    overrides = {
        "n": args.n,
        "captionless_fraction": args.captionless,
        "image_size": args.image_size,
    }
    config = SynthConfig(seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})
    manifest = write_synthetic_corpus(args.out, config)
    print(f"wrote {config.n} images to {args.out / 'images'}")
    print(f"manifest: {manifest}")
    print(f"queries:  {args.out / 'queries.jsonl'}")
    return 0


def _add_import_imageclef(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-imageclef", help="turn an ImageCLEF 2017 caption-prediction tree into a manifest"
    )
    p.add_argument(
        "--root", type=Path, required=True, help="folder with training/ validation/ test/"
    )
    p.add_argument("--out", type=Path, required=True, help="manifest path to write (.jsonl)")
    p.add_argument("--seed", type=int, default=42, help="seed of the 90:10 train/validation split")
    p.set_defaults(func=_run_import_imageclef)


def _run_import_imageclef(args: argparse.Namespace) -> int:
    from medsearch.data.imageclef import import_imageclef

    result = import_imageclef(args.root, args.out, seed=args.seed)
    counts = result.counts
    print(
        f"wrote {counts['records']} records to {result.manifest}: {counts['train']} train, "
        f"{counts['validation']} validation, {counts['test']} test, "
        f"{counts['captionless']} captionless"
    )
    if result.report is not None:
        print(
            f"left out {len(result.bad)} entries ({len(result.missing)} images missing on disk); "
            f"see {result.report}"
        )
    return 0


# --- train / evaluate / vectorize ----------------------------------------------------------------


def _figures(row: dict[str, Any]) -> str:
    """``name value`` pairs: counts as integers, rates and ranks to 4 places."""
    return "  ".join(
        f"{k} {v}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v:.4f}"
        for k, v in row.items()
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    from medsearch.train.config import (  # torch-free
        PRETRAINED_DEFAULTS,
        TINY_DEFAULTS,
        TrainConfig,
        field_help,
    )

    p = sub.add_parser(
        "train",
        help="fine-tune a CLIP (or train a tiny one) on a manifest",
        description="Flags override the --config file; unset options take the base's defaults.",
    )
    p.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="JSON or YAML file of options"
    )
    kinds = TrainConfig.__annotations__
    # One flag per TrainConfig field, with the field's own help; absent flags stay unset
    # (SUPPRESS) so the config file's values are only overridden by flags actually given.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, text in field_help().items():
        flag = "--" + name.replace("_", "-")
        # The flags' own default is SUPPRESS; the help says what an unset option becomes.
        default = defaults.get(name)
        if re.search(r"\bdefault\b", text):
            pass  # the help says it already
        elif name in PRETRAINED_DEFAULTS:
            text += f" (default: {PRETRAINED_DEFAULTS[name]}; tiny: {TINY_DEFAULTS[name]})"
        elif default is not None and default is not False and default not in ("", Path()):
            text += f" (default: {default})"
        text = text.replace("%", "%%")
        kind = str(kinds[name])
        if "bool" in kind:
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
            continue
        convert = int if "int" in kind else float if "float" in kind else str
        metavar = {"data": "MANIFEST", "out": "DIR", "checkpoint_dir": "DIR"}.get(name)
        p.add_argument(flag, type=convert, default=argparse.SUPPRESS, metavar=metavar, help=text)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from medsearch.train.config import field_help, load_train_config

    overrides = {name: getattr(args, name) for name in field_help() if hasattr(args, name)}
    config = load_train_config(args.config, overrides)
    from medsearch.train.loop import train  # torch: only once the configuration is valid

    result = train(config)
    last = result.val_metrics
    summary = f"model saved to {result.out} ({result.epochs} epochs, {result.seconds:.0f}s)"
    if last:
        t2i = last["text_to_image"]
        summary += f"; validation text→image R@1 {t2i['r@1']:.3f} R@10 {t2i['r@10']:.3f}"
    if result.bad_records:
        summary += f"; {len(result.bad_records)} unreadable records skipped (bad_records.jsonl)"
    print(summary)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="in-batch and full-pool retrieval metrics for a model")
    p.add_argument("--model", required=True, help="model folder, HF id or s3:// prefix")
    p.add_argument("--data", required=True, help="manifest")
    p.add_argument("--split", default="test", help="split to evaluate (train|validation|test)")
    p.add_argument("--out", type=Path, required=True, help="report JSON path")
    p.add_argument(
        "--queries", default=None, help="query set (default: queries.jsonl beside the manifest)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="in-batch protocol and encoding batch size"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from medsearch import storage
    from medsearch.data.manifest import BadRecord, read_manifest, write_report
    from medsearch.data.queries import queries_beside, read_queries
    from medsearch.errors import InvalidInputError
    from medsearch.evaluate import evaluate_model
    from medsearch.model.encoder import load_encoder
    from medsearch.report import write_summary

    records = read_manifest(args.data, split=args.split)
    if not records:
        raise InvalidInputError(f"{args.data} has no records in split {args.split!r}")
    queries = read_queries(args.queries) if args.queries else queries_beside(args.data)
    encoder = load_encoder(args.model)
    bad: list[BadRecord] = []
    report = evaluate_model(
        encoder,
        records,
        queries=queries,
        batch_size=args.batch_size,
        split=args.split,
        strict=args.strict,
        bad=bad,
    )
    storage.write_text(args.out, json.dumps(report, indent=2) + "\n")
    written = write_summary(report, args.out)
    bad_path = args.out.with_name(args.out.stem + ".bad_records.jsonl")
    if bad:
        write_report(bad_path, bad)
    else:
        bad_path.unlink(missing_ok=True)  # a report from an earlier run would say otherwise
    t2i, i2t = report["text_to_image"], report["image_to_text"]
    print(f"evaluated {report['n']} images of split {args.split!r}")
    print("in-batch  " + _figures(report["in_batch"]))
    for name, row in (("text→image", t2i), ("image→text", i2t)):
        print(f"{name} " + _figures(row))
    if "queries" in report:
        print("queries    " + _figures(report["queries"]))
    if bad:
        print(f"skipped {len(bad)} unreadable records: {bad_path}")
    print(f"report: {args.out} ({', '.join(str(p) for p in written)})")
    return 0


def _add_vectorize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectorize", help="embed every image of a manifest in batches")
    p.add_argument("--model", required=True, help="model folder, HF id or s3:// prefix")
    p.add_argument("--data", required=True, help="manifest")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--split", default=None, help="only this split (default: every record)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoded batch")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    p.add_argument(
        "--jsonl", action="store_true", help='also write vectors.jsonl ({"image_id", "vector"})'
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace vectors of another model in --out"
    )
    p.set_defaults(func=_run_vectorize)


def _run_vectorize(args: argparse.Namespace) -> int:
    from medsearch.data.manifest import read_manifest
    from medsearch.model.encoder import load_encoder
    from medsearch.vectorize import BAD, vectorize

    records = read_manifest(args.data, split=args.split)
    encoder = load_encoder(args.model)
    result = vectorize(
        encoder,
        records,
        args.out,
        batch_size=args.batch_size,
        strict=args.strict,
        jsonl=args.jsonl,
        overwrite=args.overwrite,
    )
    print(
        f"{result.count} vectors of dim {result.dim} in {result.out} "
        f"({result.encoded} encoded, {result.reused} reused)"
    )
    if result.bad:
        print(f"skipped {len(result.bad)} unreadable records: {result.out / BAD}")
    return 0


def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export the text and vision towers to ONNX")
    p.add_argument("--model", required=True, help="model folder, HF id or s3:// prefix")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="also write dynamically quantised models")
    p.add_argument("--model-id", default=None, help="model name to record (default: --model)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.set_defaults(func=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    from medsearch.model.onnx_export import export_onnx

    manifest = export_onnx(
        args.model, args.out, int8=args.int8, opset=args.opset, model_id=args.model_id
    )
    files = "text.onnx, vision.onnx" + (", text.int8.onnx, vision.int8.onnx" if args.int8 else "")
    print(f"exported {manifest.model_id} (dim {manifest.dim}, opset {manifest.opset}): {files}")
    print(f"ONNX encoder folder: {args.out}")
    return 0


# --- where an index lives: a folder, or an OpenSearch cluster ------------------------------------


def _add_opensearch_options(
    p: argparse.ArgumentParser, *, url_into: argparse._MutuallyExclusiveGroup | None = None
) -> argparse._ArgumentGroup:
    """Add the cluster flags (URL and auth) once for every command that talks to OpenSearch.

    ``url_into``: a mutually exclusive group to put ``--opensearch-url`` in (beside ``--index``);
    without it the URL is required. Returns the help group, for the command's own cluster flags.
    """
    group = p.add_argument_group(
        "OpenSearch", f"basic auth reads the password from {PASSWORD_ENV} (there is no flag)"
    )
    (url_into if url_into is not None else group).add_argument(
        "--opensearch-url",
        required=url_into is None,
        metavar="URL",
        help="cluster endpoint, http(s)://host[:port]",
    )
    group.add_argument(
        "--opensearch-auth",
        choices=["none", "basic"],
        default=None,
        help="default: MEDSEARCH_OPENSEARCH_AUTH, else basic when a user name is given, else none",
    )
    group.add_argument(
        "--opensearch-username", default=None, metavar="USER", help="user name for basic auth"
    )
    return group


def _add_index_source(p: argparse.ArgumentParser) -> None:
    """Add either ``--index FOLDER`` or ``--opensearch-url URL [--opensearch-index ALIAS]``."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", default=None, help="embedded index folder (or s3:// prefix)")
    cluster = _add_opensearch_options(p, url_into=source)
    cluster.add_argument(
        "--opensearch-index",
        default=None,
        metavar="ALIAS",
        help="index or alias on the cluster (default: medsearch)",
    )


def _opensearch_settings(
    args: argparse.Namespace, index: str | None, **more: Any
) -> ServiceSettings:
    """Read the cluster flags (and ``MEDSEARCH_*``) into the service settings, once."""
    from medsearch.errors import ConfigError
    from medsearch.settings import load_settings

    overrides: dict[str, Any] = {
        "engine": "opensearch",
        "opensearch_url": args.opensearch_url,
        "opensearch_index": index,
        "opensearch_auth": args.opensearch_auth,
        "opensearch_username": args.opensearch_username,
        **more,
    }
    settings = load_settings(**overrides)
    if "opensearch_auth" not in settings.model_fields_set:
        # Neither the flag nor the environment chose: on the command line that means basic auth
        # for a known user, else none (SigV4, the settings' default, is the Lambda's).
        overrides["opensearch_auth"] = "basic" if settings.opensearch_username else "none"
        settings = load_settings(**overrides)
    if settings.opensearch_auth == "basic":
        if not settings.opensearch_username:
            raise ConfigError("basic auth needs a user name: give --opensearch-username")
        if settings.opensearch_password is None:
            raise ConfigError(
                f"basic auth needs the password in the environment: set {PASSWORD_ENV}"
            )
    return settings


def _service_settings(args: argparse.Namespace, **more: Any) -> ServiceSettings:
    """Settings of the index a command names: an embedded folder or an OpenSearch index/alias."""
    from medsearch.errors import ConfigError
    from medsearch.settings import load_settings

    if args.opensearch_url is not None:
        return _opensearch_settings(args, args.opensearch_index, **more)
    stray = [
        flag
        for flag, value in (
            ("--opensearch-index", args.opensearch_index),
            ("--opensearch-auth", args.opensearch_auth),
            ("--opensearch-username", args.opensearch_username),
        )
        if value is not None
    ]
    if stray:
        raise ConfigError(f"{', '.join(stray)}: only with --opensearch-url, not with --index")
    return load_settings(engine="embedded", index_dir=str(args.index), **more)


# --- index / load / search / serve / demo --------------------------------------------------------


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index captions (BM25) and vectors (ANN) into a folder")
    p.add_argument("--data", required=True, help="manifest")
    p.add_argument("--vectors", type=Path, required=True, help="folder written by `vectorize`")
    p.add_argument("--index", type=Path, required=True, help="index folder")
    _add_publish_guard(p, "the index in --index")
    p.set_defaults(func=_run_index)


def _add_publish_guard(p: argparse.ArgumentParser, live: str) -> None:
    """Add the flags of the publish guard (:mod:`medsearch.publish_guard`)."""
    from medsearch.publish_guard import DEFAULT_MAX_DROP

    group = p.add_argument_group(
        "replacing a live index", f"checked against {live} before anything is written"
    )
    group.add_argument(
        "--allow-empty", action="store_true", help="publish an index without documents"
    )
    group.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        metavar="SHARE",
        help=f"share of the live index's documents the new one may lack ({DEFAULT_MAX_DROP})",
    )
    group.add_argument(
        "--force", action="store_true", help="publish even if more than --max-drop are dropped"
    )


def _publish_guard(args: argparse.Namespace) -> PublishGuardConfig:
    """Read the publish guard's flags into its config."""
    from medsearch.publish_guard import PublishGuardConfig

    return PublishGuardConfig(
        max_drop=args.max_drop, allow_empty=args.allow_empty, force=args.force
    )


def _run_index(args: argparse.Namespace) -> int:
    from medsearch.indexing import index_manifest

    summary = index_manifest(args.data, args.vectors, args.index, guard=_publish_guard(args))
    for line in summary.lines():
        print(line)
    return 0


def _add_load(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="load a manifest and its vectors into OpenSearch, published behind an alias",
        description=(
            "Creates a fresh run index <alias>-<run id>, bulk-loads every manifest record, checks "
            "the document count, then points the alias at it in one atomic swap and deletes old "
            "runs beyond --keep. If anything fails the alias is left as it was and the new run "
            "index is deleted."
        ),
    )
    p.add_argument("--data", required=True, help="manifest")
    p.add_argument("--vectors", type=Path, required=True, help="folder written by `vectorize`")
    cluster = _add_opensearch_options(p)
    cluster.add_argument(
        "--alias", default="medsearch", help="the alias readers search (default: medsearch)"
    )
    cluster.add_argument(
        "--run-id", default=None, help="names the run index (default: UTC time, 20250101-120000)"
    )
    cluster.add_argument(
        "--keep", type=int, default=None, help="run indexes kept, the new one included (default 2)"
    )
    cluster.add_argument("--shards", type=int, default=None, help="primary shards (default 1)")
    cluster.add_argument(
        "--replicas", type=int, default=None, help="replicas once loaded (default 1; 0 on one node)"
    )
    _add_publish_guard(p, "the indexes --alias points at")
    p.set_defaults(func=_run_load)


def _run_load(args: argparse.Namespace) -> int:
    import datetime as dt
    import time
    from dataclasses import replace

    from tqdm.auto import tqdm

    from medsearch.errors import InvalidInputError, SearchIndexError
    from medsearch.index.base import IndexModel
    from medsearch.index.opensearch import (
        OpenSearchConfig,
        OpenSearchIndex,
        connect,
        run_index_name,
    )
    from medsearch.indexing import read_index_input
    from medsearch.publish_guard import check_publish

    started = time.perf_counter()
    settings = _opensearch_settings(args, args.alias)
    sizes = {"shards": args.shards, "replicas": args.replicas, "keep_indexes": args.keep}
    config = OpenSearchConfig(**{k: v for k, v in sizes.items() if v is not None})
    source = read_index_input(args.data, args.vectors)
    if source.dim is None:
        raise InvalidInputError(f"{args.vectors}: no vectors to load")
    run_id = args.run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    name = run_index_name(args.alias, run_id)
    assert settings.opensearch_url is not None  # the settings validator requires it
    client = connect(settings.opensearch_url, http_auth=settings.opensearch_basic_auth())
    # One attempt: a wrong URL, port or password ends here at once, not after a minute of retries.
    probe = OpenSearchIndex(client, args.alias, config=replace(config, max_attempts=1))
    before = probe.alias_targets(args.alias)
    live = sum(probe.with_name(target).count() for target in before) if before else None
    check_publish(
        live,
        len(source.records),
        _publish_guard(args),
        what=f"alias {args.alias} ({', '.join(before)})" if before else f"alias {args.alias}",
    )
    index = OpenSearchIndex(client, name, config=config)
    # The vectors' model id and weight fingerprint go into the index record, so the search
    # service refuses a model with other weights instead of ranking by unrelated vectors.
    model = IndexModel(source.model_id, source.fingerprint, source.vector_floor)
    if not index.create(source.dim, alias=args.alias, model=model):
        raise SearchIndexError(f"index {name} already exists: give another --run-id")
    try:
        with index.loading():
            # A bar on stderr when it is a terminal (tqdm's disable=None), else none.
            documents = tqdm(
                source.documents(), total=len(source.records), unit="doc", desc="load", disable=None
            )
            result = index.upsert(documents)
        if result.failed:
            image_id, reason = result.failed[0]
            raise SearchIndexError(
                f"{len(result.failed)} documents failed (first: {image_id}: {reason}); "
                f"alias {args.alias} not changed"
            )
        count = index.count()
        if count != len(source.records):
            raise SearchIndexError(
                f"{name} holds {count} documents, the manifest has {len(source.records)}; "
                f"alias {args.alias} not changed"
            )
        pruned = index.swap_alias(args.alias)
    except MedsearchError as exc:
        if _drop_unpublished(index, args.alias):
            # The swap went through and pruning old runs failed: say that the run is live.
            raise SearchIndexError(f"{name} is live behind {args.alias}, but: {exc}") from exc
        raise
    except BaseException:  # Ctrl+C: nothing half-loaded stays behind either
        _drop_unpublished(index, args.alias)
        raise
    summary = source.summary(
        name,
        documents=count,
        dim=source.dim,
        seconds=time.perf_counter() - started,
        failed=[],
    )
    for line in summary.lines():
        print(line)
    print(f"  alias {args.alias} -> {name} (was {', '.join(before) or 'unset'})")
    print(f"  deleted old runs: {', '.join(pruned) or 'none'}")
    return 0


def _drop_unpublished(index: OpenSearchIndex, alias: str) -> bool:
    """Delete a run index that a failed load did not publish, so it takes no --keep slot.

    Returns whether the index is live behind ``alias`` after all (then it is kept).
    """
    try:
        if index.name in index.alias_targets(alias):
            return True
        index.drop()
    except MedsearchError as exc:
        log.warning("could not delete the unpublished index %s: %s", index.name, exc)
    return False


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("query", help="query text (1-512 characters)")
    _add_index_source(p)
    p.add_argument("--model", default=None, help="model for vector and hybrid modes")
    p.add_argument(
        "--mode",
        choices=["text", "vector", "hybrid"],
        default=None,
        help="default: hybrid with --model, else text",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="hybrid weight of the vector score")
    p.add_argument("-k", type=int, default=10, help="results to show (1-100)")
    p.add_argument("--offset", type=int, default=0, help="results to skip (paging)")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="metadata filter; repeat for several values or fields",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON response")
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from medsearch.api import build_service
    from medsearch.errors import InvalidInputError

    filters = []
    for item in args.filter:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise InvalidInputError(f"--filter {item!r}: write it as FIELD=VALUE")
        filters.append((field.strip(), value))
    # A text search needs no model, so none is loaded for it.
    model = None if args.mode == "text" else args.model
    service = build_service(_service_settings(args, model=model))
    response = service.search(
        args.query, mode=args.mode, alpha=args.alpha, k=args.k, offset=args.offset, filters=filters
    )
    if args.json:
        print(response.model_dump_json(indent=2))
        return 0
    alpha = f" (alpha {response.alpha:g})" if response.alpha is not None else ""
    print(
        f"{response.total} matches · mode {response.mode}{alpha} · "
        f"results {response.offset + 1}-{response.offset + len(response.results)} · "
        f"{response.took_ms:.1f} ms"
    )
    if not response.results:
        return 0
    print(f"{'#':>4}  {'score':>8}  {'bm25':>8}  {'cosine':>7}  {'image_id':<24}  caption")
    for rank, hit in enumerate(response.results, start=response.offset + 1):
        bm25 = f"{hit.bm25_score:8.3f}" if hit.bm25_score is not None else f"{'-':>8}"
        cosine = f"{hit.vector_score:7.3f}" if hit.vector_score is not None else f"{'-':>7}"
        caption = hit.caption if hit.caption is not None else "(no caption)"
        if len(caption) > 80:
            caption = caption[:79] + "…"
        print(f"{rank:>4}  {hit.score:8.4f}  {bm25}  {cosine}  {hit.image_id:<24}  {caption}")
    return 0


def _add_evaluate_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-search", help="score the text, vector and hybrid modes of an index on a query set"
    )
    _add_index_source(p)
    p.add_argument("--model", required=True, help="the model the index was built with")
    p.add_argument("--queries", required=True, help="queries.jsonl with relevance judgments")
    p.add_argument("--alpha", type=float, default=0.5, help="hybrid weight of the vector score")
    p.add_argument("-k", type=int, default=10, help="cut-off of nDCG@k and R@k")
    p.add_argument("--sweep", action="store_true", help="also score hybrid at alpha 0, 0.1, …, 1")
    p.add_argument("--out", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=_run_evaluate_search)


def _run_evaluate_search(args: argparse.Namespace) -> int:
    import json

    from medsearch import storage
    from medsearch.api import build_service
    from medsearch.data.queries import read_queries
    from medsearch.search_eval import ALPHA_SWEEP, evaluate_search

    service = build_service(_service_settings(args, model=args.model))
    sweep = ALPHA_SWEEP if args.sweep else ()
    queries = read_queries(args.queries)
    report = evaluate_search(service, queries, alpha=args.alpha, k=args.k, sweep=sweep)
    print(f"{report['queries']} queries, k={report['k']}, hybrid alpha {report['alpha']:g}")
    rows = [(mode, row) for mode, row in report["modes"].items()]
    rows += [(f"α={a}", row) for a, row in report.get("alpha_sweep", {}).items()]
    for name, row in rows:
        print(
            f"{name:<7} nDCG@{args.k} {row[f'ndcg@{args.k}']:.4f}  R@{args.k} "
            f"{row[f'r@{args.k}']:.4f}  captionless found {row['captionless_found']}"
            f"/{row['captionless_relevant']}"
        )
    if "best_alpha" in report:
        print(f"best hybrid alpha on these queries: {report['best_alpha']:g}")
    if args.out is not None:
        storage.write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the API and the web page")
    _add_index_source(p)
    p.add_argument(
        "--model",
        default=None,
        help="model folder, HF id or s3:// prefix (an ONNX export with --encoder onnx); "
        "without one only text search is served",
    )
    p.add_argument(
        "--encoder",
        choices=("torch", "onnx"),
        default=None,
        help="encoder implementation (default: MEDSEARCH_ENCODER, else torch)",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the ONNX export's int8 towers (default: MEDSEARCH_ONNX_INT8, else fp32)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--web", type=Path, default=None, help="web page folder (default: web/)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from medsearch.api import build_service, create_app, run_server

    web = args.web or Path(__file__).resolve().parent.parent / "web"
    chosen = {"encoder": args.encoder, "onnx_int8": args.int8}
    given = {name: value for name, value in chosen.items() if value is not None}
    settings = _service_settings(args, model=args.model, web_dir=web, **given)
    # Built now, not on the first request, so a bad index or model ends here with one line.
    service = build_service(settings)
    app = create_app(settings, service_factory=lambda: service)
    run_server(
        app,
        host=args.host,
        port=args.port,
        on_ready=lambda url: print(f"medsearch serve: {url}  (Ctrl+C to stop)", flush=True),
    )
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="synth → train → evaluate → vectorize → index → evaluate-search → serve"
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("demo"), help="folder for everything the demo builds"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=8000, help="port to serve on (0 picks a free one)")
    p.add_argument("--no-serve", action="store_true", help="build everything, then exit")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from medsearch.demo import build_demo, serve_argv

    layout = build_demo(args.workdir, main)
    print(f"demo built in {layout.workdir}: evaluation report {layout.report}")
    if args.no_serve:
        print(f"serve it with: medsearch {' '.join(serve_argv(layout, args.host, args.port))}")
        return 0
    return main(serve_argv(layout, args.host, args.port))


# --- aws: start and watch the retrain-and-reindex pipeline (Step Functions) ---------------------


def _add_aws(sub: argparse._SubParsersAction) -> None:
    from medsearch.pipeline_runs import DEFAULT_STACK, PIPELINE_ARN_ENV, PIPELINE_OUTPUT

    p = sub.add_parser(
        "aws",
        help="start and watch the retrain-and-reindex pipeline on AWS",
        description=(
            f"The state machine is --state-machine ARN, else {PIPELINE_ARN_ENV}, else the output "
            f"{PIPELINE_OUTPUT} of the stack --stack (default {DEFAULT_STACK}); an explicit "
            f"--stack goes before {PIPELINE_ARN_ENV}. Credentials and region come from the usual "
            "AWS configuration."
        ),
    )
    aws = p.add_subparsers(dest="aws_command", required=True, metavar="COMMAND")
    _add_aws_start_pipeline(aws)
    _add_aws_status(aws)
    _add_aws_runs(aws)


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Add where the state machine is found (``--stack`` | ``--state-machine``) and the region."""
    from medsearch.pipeline_runs import DEFAULT_STACK, PIPELINE_ARN_ENV, PIPELINE_OUTPUT

    group = p.add_argument_group(
        "pipeline",
        f"the state machine: --state-machine, else {PIPELINE_ARN_ENV}, else the stack's "
        f"{PIPELINE_OUTPUT} output",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--stack",
        default=None,
        help=f"CloudFormation stack whose {PIPELINE_OUTPUT} output names it (default: "
        f"{DEFAULT_STACK})",
    )
    where.add_argument("--state-machine", default=None, metavar="ARN", help="its ARN")
    group.add_argument("--region", default=None, help="AWS region (default: the AWS config's)")


def _pipeline_client(args: argparse.Namespace) -> PipelineClient:
    """Return the boto3 adapter (imported here: boto3 only once an aws command runs)."""
    from medsearch.errors import ConfigError

    try:
        from medsearch._pipeline_aws import Boto3PipelineClient
    except ImportError as exc:
        raise ConfigError(f"the aws commands need boto3 ({exc}): install medsearch[aws]") from exc
    if not args.verbose:
        # botocore says at INFO where it found the credentials, on every run.
        logging.getLogger("botocore").setLevel(logging.WARNING)
    return Boto3PipelineClient(region=args.region)


def _state_machine(args: argparse.Namespace, client: PipelineClient) -> str:
    """The state machine's ARN: --state-machine, else --stack's output, else the variable,
    else the default stack's output."""
    import os

    from medsearch.pipeline_runs import DEFAULT_STACK, PIPELINE_ARN_ENV, resolve_state_machine

    env = os.environ.get(PIPELINE_ARN_ENV) if args.stack is None else None
    return resolve_state_machine(
        client, flag=args.state_machine, env=env, stack=args.stack or DEFAULT_STACK
    )


def _utc(moment: dt.datetime | None, missing: str = "-") -> str:
    """A time for the tables: ``2025-01-01 12:00:00`` in UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else missing


def _add_aws_start_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "start-pipeline",
        help="start a retrain-and-reindex run and print its execution ARN",
        description=(
            "Starts an execution whose input holds only the options given (the state machine "
            "fills in the rest). --wait follows it: exit 0 when it succeeds, 1 when it fails, "
            "times out or is aborted."
        ),
    )
    p.add_argument(
        "--manifest", default=None, metavar="S3_URI", help="the corpus manifest, s3://bucket/key"
    )
    p.add_argument(
        "--base", default=None, metavar="MODEL", help="model to fine-tune: HF id, s3:// or tiny"
    )
    p.add_argument(
        "--hyperparameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training option, sent as text; repeat for several",
    )
    p.add_argument(
        "--min-recall-at-10",
        type=float,
        default=None,
        metavar="X",
        help="the gate: publish only a model whose text→image R@10 reaches X (0-1)",
    )
    p.add_argument("--train-instance-type", default=None, metavar="TYPE", help="e.g. ml.g5.xlarge")
    p.add_argument(
        "--spot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="managed spot training (default: the state machine's)",
    )
    p.add_argument(
        "--name", default=None, help="execution name (default: run-<UTC yyyymmdd-HHMMSS>)"
    )
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    _add_pipeline_options(p)
    p.set_defaults(func=_run_aws_start_pipeline)


def _run_aws_start_pipeline(args: argparse.Namespace) -> int:
    import json

    from medsearch import storage
    from medsearch.errors import InvalidInputError
    from medsearch.pipeline_runs import (
        PipelineRunConfig,
        check_execution_name,
        default_execution_name,
        parse_hyperparameters,
    )

    # Everything is checked before the first AWS call, so a typo starts nothing.
    if args.manifest is not None and not storage.is_s3(args.manifest):
        raise InvalidInputError(f"--manifest {args.manifest!r}: the pipeline reads s3:// URIs")
    recall = args.min_recall_at_10
    if recall is not None and not 0.0 <= recall <= 1.0:
        raise InvalidInputError(f"--min-recall-at-10 {recall:g}: give a recall from 0 to 1")
    instance = args.train_instance_type
    if instance is not None and not instance.startswith("ml."):
        raise InvalidInputError(f"--train-instance-type {instance!r}: SageMaker types start ml.")
    if args.name is not None:
        name = check_execution_name(args.name)
    else:
        name = default_execution_name(dt.datetime.now(dt.UTC))
    config = PipelineRunConfig(
        manifest=args.manifest,
        base=args.base,
        hyperparameters=parse_hyperparameters(args.hyperparameter),
        min_recall_at_10=recall,
        train_instance_type=instance,
        spot=args.spot,
    )
    client = _pipeline_client(args)
    machine = _state_machine(args, client)
    arn = client.start_execution(machine, name, json.dumps(config.execution_input()))
    print(arn, flush=True)
    return _follow_execution(client, arn) if args.wait else 0


def _follow_execution(client: PipelineClient, arn: str) -> int:
    """Print each status or step change until the run ends; 0 if it succeeded, else 1."""
    from medsearch import pipeline_runs

    def show(execution: Execution, step: str | None) -> None:
        print(f"{_utc(dt.datetime.now(dt.UTC))}  {execution.status:<9}  {step or '-'}", flush=True)

    done = pipeline_runs.watch_execution(
        client, arn, on_change=show, poll_seconds=pipeline_runs.POLL_SECONDS
    )
    if done.status == "SUCCEEDED":
        for key, value in pipeline_runs.output_figures(done.output).items():
            print(f"{_FIGURE_LABELS.get(key, key)}: {_figure(value)}")
        return 0
    reason = ": ".join(" ".join(text.split()) for text in (done.error, done.cause) if text)
    print(
        f"medsearch aws: execution {done.name} {done.status}: {reason or 'no error given'}",
        file=sys.stderr,
    )
    return 1


_FIGURE_LABELS = {"recallAt10": "recall@10"}


def _figure(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _add_aws_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="a pipeline run: status, times, step, SageMaker jobs, gate figures",
        description="Without an execution: the latest one of the state machine.",
    )
    p.add_argument(
        "execution", nargs="?", default=None, metavar="EXECUTION_ARN_OR_NAME", help="the run"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    _add_pipeline_options(p)
    p.set_defaults(func=_run_aws_status)


def _run_aws_status(args: argparse.Namespace) -> int:
    from medsearch.errors import NotFoundError
    from medsearch.pipeline_runs import describe_run, execution_arn_for, latest_execution

    client = _pipeline_client(args)
    if args.execution is None:
        execution = latest_execution(client, _state_machine(args, client))
    else:
        if args.execution.startswith("arn:"):
            arn = args.execution
        else:
            arn = execution_arn_for(_state_machine(args, client), args.execution)
        try:
            execution = client.describe_execution(arn)
        except NotFoundError as exc:
            raise NotFoundError(f"no execution {arn}") from exc
    status = describe_run(client, execution)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    rows = [
        ("execution", execution.name),
        ("arn", execution.arn),
        ("status", execution.status),
        ("started", _utc(execution.start) + " UTC"),
        ("stopped", _utc(execution.stop, "-") + (" UTC" if execution.stop else "")),
        ("step", status.step or "-"),
    ]
    rows += [(f"{job.kind} job", f"{job.name}: {job.status or job.note}") for job in status.jobs]
    rows += [(_FIGURE_LABELS.get(k, k), _figure(v)) for k, v in status.figures.items()]
    for label, text in (("error", execution.error), ("cause", execution.cause)):
        if text:
            rows.append((label, " ".join(text.split())))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


def _add_aws_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="the recent pipeline runs, newest first")
    p.add_argument("--limit", type=int, default=10, help="runs to list (1-1000, default 10)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    _add_pipeline_options(p)
    p.set_defaults(func=_run_aws_runs)


def _run_aws_runs(args: argparse.Namespace) -> int:
    from medsearch.errors import InvalidInputError
    from medsearch.pipeline_runs import iso_time

    if not 1 <= args.limit <= 1000:
        raise InvalidInputError(f"--limit {args.limit}: give 1 to 1000")
    client = _pipeline_client(args)
    machine = _state_machine(args, client)
    runs = client.list_executions(machine, args.limit)
    if args.json:
        items = [
            {
                "name": run.name,
                "executionArn": run.arn,
                "status": run.status,
                "startDate": iso_time(run.start),
                "stopDate": iso_time(run.stop),
            }
            for run in runs
        ]
        print(json.dumps(items, indent=2))
        return 0
    if not runs:
        print(f"no runs yet of {machine}")
        return 0
    table = [("name", "status", "started (UTC)", "stopped (UTC)")]
    table += [(run.name, run.status, _utc(run.start), _utc(run.stop)) for run in runs]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
    return 0


# --- entry point ---------------------------------------------------------------------------------

_COMMANDS = (
    _add_synth,
    _add_import_imageclef,
    _add_train,
    _add_evaluate,
    _add_vectorize,
    _add_export_onnx,
    _add_index,
    _add_load,
    _add_search,
    _add_evaluate_search,
    _add_serve,
    _add_demo,
    _add_aws,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="medsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = _DefaultsHelpFormatter
    return parser


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, where it has one worth saying.

    argparse's ArgumentDefaultsHelpFormatter also prints ``None`` and ``False``, which here mean
    "not given" (a default chosen later, named in the help text itself).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or re.search(r"\bdefault\b", text)
            or f"({default})" in text
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors print one line and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The OpenSearch client logs every non-2xx answer, also those the engine expects (a 404 for
    # an alias not made yet); the engine logs its own retries and raises what matters.
    logging.getLogger("opensearch").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    # faiss logs at INFO each CPU build it tries (with a ModuleNotFoundError for every one absent).
    logging.getLogger("faiss").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except MedsearchError as exc:
        print(f"medsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
