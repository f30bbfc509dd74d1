"""Vectorize: embed every image of a manifest into unit float32 vectors, resumably.

Output folder layout (what :func:`read_vectors` and the indexer read)::

    vectors.npy        float32 [count, dim], unit rows, in manifest order
    ids.json           the image ids, row by row
    meta.json          model id, weight fingerprint, dim, count, created, similarity, vector_floor
                       (the calibrated cosine floor: medsearch.relevance) (written last)
    run.json           what a rerun checks: model fingerprint, probe vector, each id's image
    bad_records.jsonl  records skipped (id + reason); empty when none
    vectors.jsonl      optional: {"image_id", "vector"} per line (the batch-transform shape)

Resume: every encoded batch is written at once to ``.partial/chunk-NNNNNN.npz`` (atomic rename),
and the final files are assembled at the end aside, in ``.assembly/``, then moved into place; a
``COMMIT`` file (the new set's file names, written last in ``.assembly/``) marks the new set
complete, and whoever finds it (a rerun, :func:`read_vectors`) finishes the moves first. So a kill
at any moment leaves the earlier complete output or the new one, never a folder without
``meta.json`` whose vectors a rerun would have to encode again; ``.partial/`` goes only once the
new output is in place. A rerun reuses
the vectors of records whose ``(image_id, image)`` are unchanged and encodes only the rest, so an
interrupted run loses at most one batch and a grown manifest only encodes what is new. Skipped
(bad) records are retried by a rerun. Vectors of different models never mix: a run stores the
encoder's weight fingerprint and a probe (the vector of a fixed text), and a folder written by
another model — another fine-tune of the same dimension, or a model retrained at the same path —
is refused unless ``overwrite`` is given, naming both models. Refusing, rather than re-encoding
everything quietly, keeps a slip of ``--model`` from discarding hours of vectors. Where both runs
have a fingerprint, it decides instead of the model id, so the same weights moved to another
folder or to S3 keep their vectors; the probe still has to agree (another runtime or precision of
the same weights gives slightly different vectors, which are not mixed either). A folder from
before fingerprints is compared by model id and probe, as it always was.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medsearch import storage
from medsearch.data.images import load_record_images
from medsearch.data.manifest import BadRecord, Record, write_report
from medsearch.errors import InvalidInputError, StorageError
from medsearch.relevance import VectorFloor, calibrate_floor, sample_pairs
from medsearch.vectors import SIMILARITY, Encoder, encoder_fingerprint, normalize

log = logging.getLogger(__name__)

VECTORS = "vectors.npy"
IDS = "ids.json"
META = "meta.json"
RUN = "run.json"
BAD = "bad_records.jsonl"
JSONL = "vectors.jsonl"
PARTIAL = ".partial"
ASSEMBLY = ".assembly"
COMMIT = "COMMIT"
# Every file of an output set, ``meta.json`` last (the order the new set is moved into place).
OUTPUT_FILES = (VECTORS, IDS, RUN, BAD, JSONL, META)
FORMAT = 1
# A fixed text whose vector identifies the model's weights (its id may be an unchanged path).
PROBE_TEXT = "medsearch vectorize probe: chest x-ray"
_PROBE_TOLERANCE = 1e-4


@dataclass
class VectorizeResult:
    """What a vectorize run produced: where, how many, and what was skipped."""

    out: Path
    model: str
    dim: int
    count: int
    encoded: int
    reused: int
    bad: list[BadRecord] = field(default_factory=list)


def vectorize(
    encoder: Encoder,
    records: Sequence[Record],
    out: Path,
    *,
    batch_size: int = 64,
    strict: bool = False,
    jsonl: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> VectorizeResult:
    """Embed every record's image into ``out`` (resumable; bad images skipped and reported)."""
    if batch_size < 1:
        raise InvalidInputError("batch_size must be at least 1")
    _check_unique(records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "model": encoder.model_id,
        "fingerprint": encoder_fingerprint(encoder),
        "dim": encoder.dim,
        "probe": _probe(encoder),
    }
    done = _reusable(out, state, records, overwrite)
    partial = out / PARTIAL
    partial.mkdir(exist_ok=True)
    storage.write_text(partial / "state.json", json.dumps(state))
    keys = {r.image_id: r.image for r in records}
    for chunk_ids, chunk_images, chunk_vectors in _read_chunks(partial):
        # Only vectors of this manifest's (id, image) pairs count: an image may have moved.
        for image_id, image, vector in zip(chunk_ids, chunk_images, chunk_vectors, strict=True):
            if keys.get(image_id) == image:
                done[image_id] = vector
    todo = [r for r in records if r.image_id not in done]
    reused = len(records) - len(todo)
    log.info("vectorize: %d to encode, %d reused, into %s", len(todo), reused, out)
    bad: list[BadRecord] = []
    encoded = 0
    next_chunk = _next_chunk_number(partial)
    # A bar on a terminal unless ``progress`` says otherwise (tqdm's None = auto).
    disable = None if progress is None else not progress
    with tqdm(total=len(todo), unit="img", desc="vectorize", disable=disable) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            pairs = load_record_images(batch, strict=strict, bad=bad)  # bad ones go to ``bad``
            good = [record for record, _ in pairs]
            if good:
                images = [image for _, image in pairs]
                vectors = normalize(encoder.encode_images(images, batch_size=batch_size))
                _check_vectors(vectors, len(good), encoder.dim)
                ids = [r.image_id for r in good]
                _write_chunk(partial, next_chunk, ids, [keys[i] for i in ids], vectors)
                next_chunk += 1
                done.update(zip(ids, vectors, strict=True))
                encoded += len(good)
            bar.update(len(batch))
    floor = _calibrate(encoder, records, done, batch_size)
    count = _assemble(out, encoder, state, records, done, bad, jsonl, floor)
    _commit_assembly(out)
    shutil.rmtree(partial, ignore_errors=True)
    result = VectorizeResult(out, encoder.model_id, encoder.dim, count, encoded, reused, bad)
    log.info(
        "vectorize: %d vectors (%d new, %d reused, %d bad) in %s",
        result.count,
        encoded,
        reused,
        len(bad),
        out,
    )
    return result


def _calibrate(
    encoder: Encoder, records: Sequence[Record], done: dict[str, np.ndarray], batch_size: int
) -> VectorFloor | None:
    """Learn the vectors' cosine floor from the corpus's own captions (see
    :mod:`medsearch.relevance`): one text batch of at most 512 captions, on every run, reused
    vectors included, so the floor always belongs to the vectors written."""
    ids = [r.image_id for r in records if r.image_id in done]
    if not ids:
        return None
    captions = {r.image_id: r.caption for r in records}
    chosen = [ids[i] for i in sample_pairs(ids, captions)]
    if not chosen:
        return None
    texts = normalize(encoder.encode_texts([captions[i] or "" for i in chosen], batch_size))
    images = np.stack([done[i] for i in chosen]).astype(np.float32)
    floor = calibrate_floor(texts, images, np.stack([done[i] for i in ids]))
    if floor is not None:
        log.info(
            "vectorize: vector floor %.4f (centred cosine; %.1f%% of %d caption pairs above it, "
            "%.1f%% of non-matching ones)",
            floor.floor,
            100 * floor.matched,
            floor.pairs,
            100 * floor.unmatched,
        )
    return floor


def read_vectors(path: Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read vectors written by :func:`vectorize` (a folder) or a JSON Lines file of vectors.

    Returns ids, float32 unit vectors ``[count, dim]`` and the metadata. A folder without
    ``vectors.npy`` is read from its ``*.jsonl`` / ``*.jsonl.out`` files (batch-transform output).
    """
    path = Path(path)
    if path.is_dir() and ((path / VECTORS).exists() or (path / ASSEMBLY / COMMIT).exists()):
        return _read_folder(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.out")))
        if not files:
            raise InvalidInputError(f"{path}: no {VECTORS} and no .jsonl vector files")
        return _read_jsonl(files)
    if path.is_file():
        return _read_jsonl([path])
    raise InvalidInputError(f"{path}: no such vectors folder or file")


# --- reuse and fingerprints ----------------------------------------------------------------------


def _probe(encoder: Encoder) -> list[float]:
    vector = normalize(encoder.encode_texts([PROBE_TEXT]))[0]
    return [float(x) for x in vector]


def _model_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Return how the model of run ``old`` differs from that of ``new`` (None: the same one)."""
    if old.get("dim") != new.get("dim"):
        return f"dim {old.get('dim')}"
    old_fp, new_fp = old.get("fingerprint"), new.get("fingerprint")
    if old_fp and new_fp and old_fp != new_fp:
        return f"weights {old_fp}, this model's are {new_fp}"
    if not (old_fp and new_fp) and old.get("model") != new.get("model"):
        return "another model id, no weight fingerprints to compare"
    po, pn = np.asarray(old.get("probe", []), float), np.asarray(new.get("probe", []), float)
    if po.shape != pn.shape or not np.allclose(po, pn, atol=_PROBE_TOLERANCE):
        if old_fp and new_fp:
            return f"weights {old_fp} too, but run at another precision or on another runtime"
        return "its weights make other vectors than this model's"
    return None


def _reusable(
    out: Path, state: dict[str, Any], records: Sequence[Record], overwrite: bool
) -> dict[str, np.ndarray]:
    """Return finished vectors in ``out`` that this run may keep (or refuse a foreign folder)."""
    _commit_assembly(out)  # a run killed while moving its output into place: finish it
    previous = []
    run = _load_json(out / RUN) if (out / META).exists() and (out / RUN).exists() else {}
    if (out / META).exists():
        previous.append(("output", run))
    if (out / PARTIAL / "state.json").exists():
        previous.append(("unfinished run", _load_json(out / PARTIAL / "state.json")))
    for what, old in previous:
        difference = _model_difference(old, state)
        if difference is None:
            continue
        if not overwrite:
            raise InvalidInputError(
                f"{out} holds the {what} of another model ({old.get('model')!r}: {difference});"
                f" this is {state['model']!r}, dim {state['dim']}: use a new folder or overwrite"
            )
        log.warning("vectorize: discarding %s of another model in %s", what, out)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        shutil.rmtree(out / ASSEMBLY, ignore_errors=True)
        return {}
    done: dict[str, np.ndarray] = {}
    if (out / META).exists():
        keys = {r.image_id: r.image for r in records}
        try:
            ids, vectors, _ = _read_folder(out)
        except InvalidInputError as exc:
            log.warning("vectorize: ignoring unreadable earlier output (%s)", exc)
            return {}
        images = run.get("images", {})
        for image_id, vector in zip(ids, vectors, strict=True):
            if image_id in keys and images.get(image_id) == keys[image_id]:
                done[image_id] = vector
    return done


def _read_chunks(partial: Path) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    for chunk in sorted(partial.glob("chunk-*.npz")):
        try:
            with np.load(chunk, allow_pickle=False) as data:
                ids = [str(i) for i in data["ids"]]
                images = [str(i) for i in data["images"]]
                vectors = data["vectors"].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            # Written by rename, so a damaged chunk means outside interference: redo its batch.
            log.warning("vectorize: ignoring unreadable chunk %s (%s)", chunk.name, exc)
            continue
        yield ids, images, vectors


def _next_chunk_number(partial: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in partial.glob("chunk-*.npz")]
    return max(numbers, default=-1) + 1


def _write_chunk(
    partial: Path, number: int, ids: list[str], images: list[str], vectors: np.ndarray
) -> None:
    target = partial / f"chunk-{number:06d}.npz"
    tmp = partial / f".chunk-{number:06d}.tmp.npz"
    np.savez(tmp, ids=np.array(ids), images=np.array(images), vectors=vectors)
    os.replace(tmp, target)


def _check_unique(records: Sequence[Record]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.image_id in seen:
            raise InvalidInputError(f"duplicate image_id {record.image_id!r} in the records")
        seen.add(record.image_id)


def _check_vectors(vectors: np.ndarray, count: int, dim: int) -> None:
    if vectors.shape != (count, dim):
        raise InvalidInputError(f"encoder returned shape {vectors.shape}, expected {(count, dim)}")
    if not np.isfinite(vectors).all():
        raise InvalidInputError("encoder returned non-finite vectors")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    return data


def _load_ids(path: Path) -> list[str]:
    """The image ids of a vectors folder; a damaged or foreign file is a one-line error."""
    try:
        ids = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc.msg})") from None
    except StorageError as exc:
        raise InvalidInputError(str(exc)) from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInputError(f"{path}: expected a JSON list of image ids")
    return ids


# --- assembly and reading ------------------------------------------------------------------------


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def _assemble(
    out: Path,
    encoder: Encoder,
    state: dict[str, Any],
    records: Sequence[Record],
    done: dict[str, np.ndarray],
    bad: list[BadRecord],
    jsonl: bool,
    floor: VectorFloor | None = None,
) -> int:
    """Write the new output set aside, in ``out/.assembly/``, ``COMMIT`` last; return the number
    of vectors in it. ``out`` itself is not touched: :func:`_commit_assembly` moves the set in."""
    ordered = [r for r in records if r.image_id in done]
    ids = [r.image_id for r in ordered]
    dim = int(state["dim"])
    vectors = (
        np.stack([done[i] for i in ids]).astype(np.float32)
        if ids
        else np.zeros((0, dim), dtype=np.float32)
    )
    aside = out / ASSEMBLY
    shutil.rmtree(aside, ignore_errors=True)  # an assembly killed before its COMMIT: redo it
    aside.mkdir()
    _save_npy(aside / VECTORS, vectors)
    storage.write_text(aside / IDS, json.dumps(ids))
    write_report(aside / BAD, bad)
    if jsonl:
        storage.write_text(aside / JSONL, "".join(_jsonl_lines(ids, vectors)))
    run = {**state, "images": {r.image_id: r.image for r in ordered}}
    storage.write_text(aside / RUN, json.dumps(run))
    meta = {
        "format": FORMAT,
        "model": encoder.model_id,
        "fingerprint": state.get("fingerprint"),
        "dim": dim,
        "count": len(ids),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "similarity": SIMILARITY,
        "normalized": True,
        "bad": len(bad),
        "vector_floor": floor.to_json() if floor is not None else None,
    }
    storage.write_text(aside / META, json.dumps(meta, indent=2) + "\n")
    files = [name for name in OUTPUT_FILES if (aside / name).exists()]
    storage.write_text(aside / COMMIT, json.dumps(files))
    return len(ids)


def _commit_assembly(out: Path) -> None:
    """Move a complete assembled set (one with ``COMMIT``) into ``out``, ``meta.json`` last.

    Idempotent, so it finishes a commit a kill interrupted: files already moved are not in
    ``.assembly/`` any more, and those of the earlier output that the new set lacks (a
    ``vectors.jsonl`` not asked for again) are removed before ``meta.json`` moves. Until then
    the folder is read through this function, so no reader sees the two sets mixed.
    """
    aside = out / ASSEMBLY
    if not (aside / COMMIT).exists():
        return
    try:
        files = json.loads(storage.read_text(aside / COMMIT))
        for name in OUTPUT_FILES:
            if name == META:
                continue
            if name in files:
                if (aside / name).exists():
                    os.replace(aside / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
        if (aside / META).exists():
            os.replace(aside / META, out / META)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{out}: cannot finish moving the new vectors in ({exc})") from exc
    shutil.rmtree(aside, ignore_errors=True)


def _jsonl_lines(ids: Sequence[str], vectors: np.ndarray) -> Iterator[str]:
    for image_id, vector in zip(ids, vectors, strict=True):
        yield json.dumps({"image_id": image_id, "vector": [float(x) for x in vector]}) + "\n"


def _read_folder(path: Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    _commit_assembly(path)
    if not (path / META).exists():
        raise InvalidInputError(f"{path}: no {META} (an unfinished vectorize run?)")
    meta = _load_json(path / META)
    try:
        vectors = np.load(path / VECTORS, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path / VECTORS}: unreadable ({exc})") from None
    ids = _load_ids(path / IDS)
    dim = meta.get("dim")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[0] != meta.get("count"):
        raise InvalidInputError(
            f"{path}: {vectors.shape} vectors, {len(ids)} ids, meta count {meta.get('count')}"
        )
    if vectors.shape[1] != dim and len(ids):
        raise InvalidInputError(f"{path}: vectors have dim {vectors.shape[1]}, meta says {dim}")
    return _validated(ids, vectors, meta, path)


def _read_jsonl(files: Sequence[Path]) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    ids: list[str] = []
    rows: list[list[float]] = []
    for file in files:
        for number, line in enumerate(storage.read_text(file).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                image_id, vector = item["image_id"], item["vector"]
            except (json.JSONDecodeError, TypeError, KeyError):
                raise InvalidInputError(
                    f'{file}:{number}: expected {{"image_id": ..., "vector": [...]}}'
                ) from None
            if not isinstance(image_id, str) or not isinstance(vector, list):
                raise InvalidInputError(f"{file}:{number}: image_id must be text, vector a list")
            ids.append(image_id)
            rows.append(vector)
    if rows and len({len(r) for r in rows}) != 1:
        raise InvalidInputError(f"{files[0].parent}: vectors of different lengths")
    try:
        vectors = np.array(rows, dtype=np.float32).reshape(len(rows), -1 if rows else 0)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{files[0].parent}: vectors must be lists of numbers") from None
    sidecar = files[0].parent / META
    meta = _load_json(sidecar) if sidecar.exists() else {}
    meta.update({"dim": int(vectors.shape[1]), "count": len(ids)})
    meta.setdefault("model", None)
    meta.setdefault("similarity", SIMILARITY)
    return _validated(ids, vectors, meta, files[0])


def _validated(
    ids: list[str], vectors: np.ndarray, meta: dict[str, Any], where: Path
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"{where}: duplicate image ids")
    if not np.isfinite(vectors).all():
        raise InvalidInputError(f"{where}: vectors contain NaN or infinity")
    return ids, normalize(vectors), meta
