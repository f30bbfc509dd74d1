"""Fixtures for the search service and API tests: a small corpus, a brute-force index, an encoder.

``MemoryIndex`` is a complete, independent :class:`SearchIndex` (BM25 with k1 = 1.2, b = 0.75,
exact cosine kNN, fusion through :mod:`medsearch.fusion`, filters, exclusions, paging), not a
mock: the service is tested against real ranking. ``ColourEncoder`` is a deterministic encoder
without torch whose image and text spaces agree on colour: an image's vector is its mean RGB per
quadrant, and a text naming a colour ("red") maps to that colour everywhere, so vector search by
text finds captionless images of the right colour, and an uploaded image finds its own copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medsearch.fusion import fuse, sort_hits
from medsearch.index.base import (
    Document,
    Hit,
    SearchPage,
    SearchQuery,
    UpsertResult,
)
from medsearch.search import SearchService
from medsearch.vectors import normalize

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "grey": (128, 128, 128),
}
_TOKEN = re.compile(r"[a-z0-9]+")


class ColourEncoder:
    """A deterministic 12-d encoder: mean RGB of each image quadrant; colour words for texts."""

    model_id = "colour-encoder"
    name = "colour-encoder"
    dim = 12

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Colour words → that colour in every quadrant; other words → a small hashed offset."""
        rows = []
        for text in texts:
            vector = np.zeros(self.dim, dtype=np.float32)
            for token in _TOKEN.findall(text.lower()):
                if token in COLOURS:
                    vector += np.tile(np.array(COLOURS[token], dtype=np.float32) / 255.0, 4)
                else:
                    seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "little")
                    vector += 0.05 * np.random.default_rng(seed).random(self.dim, dtype=np.float32)
            if not vector.any():
                vector[:] = 1.0
            rows.append(vector)
        return normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Mean RGB of the four quadrants, as one unit vector."""
        rows = [
            np.asarray(
                image.convert("RGB").resize((2, 2), Image.Resampling.BOX), np.float32
            ).reshape(-1)
            / 255.0
            + 1e-3
            for image in images
        ]
        return normalize(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class MemoryIndex:
    """A brute-force in-memory SearchIndex: exact BM25 and cosine, to check the service against."""

    def __init__(self, documents: Iterable[Document] = ()) -> None:
        self.documents: dict[str, Document] = {}
        self.searches: list[SearchQuery] = []
        self.upsert(documents)

    def upsert(self, documents: Iterable[Document]) -> UpsertResult:
        """Insert or replace by image_id."""
        written = 0
        for document in documents:
            self.documents[document.image_id] = document
            written += 1
        return UpsertResult(written=written)

    def delete(self, image_ids: Iterable[str]) -> int:
        """Remove documents; return how many existed."""
        return sum(self.documents.pop(i, None) is not None for i in image_ids)

    def get(self, image_id: str) -> Document | None:
        """Return one document or None."""
        return self.documents.get(image_id)

    def get_many(
        self, image_ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, Document]:
        """Documents that exist among the ids (vectors dropped when not wanted)."""
        found = {i: self.documents[i] for i in image_ids if i in self.documents}
        if with_vectors:
            return found
        return {i: dataclasses.replace(d, vector=None) for i, d in found.items()}

    def count(self) -> int:
        """Number of documents."""
        return len(self.documents)

    @property
    def dim(self) -> int | None:
        """Vector dimension of the first document with a vector."""
        for document in self.documents.values():
            if document.vector is not None:
                return len(document.vector)
        return None

    def facets(self, fields: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Every metadata field with its value counts."""
        counts: dict[str, Counter[str]] = {}
        for document in self.documents.values():
            for name, value in document.metadata.items():
                counts.setdefault(name, Counter())[str(value)] += 1
        names = fields if fields is not None else sorted(counts)
        return {name: dict(counts.get(name, Counter()).most_common()) for name in names}

    def _bm25(self, text: str, pool: list[Document]) -> list[tuple[str, float]]:
        captioned = [d for d in self.documents.values() if d.caption]
        n_docs = len(captioned)
        lengths = {d.image_id: len(_tokens(d.caption or "")) for d in captioned}
        average = sum(lengths.values()) / max(n_docs, 1)
        frequency = Counter(t for d in captioned for t in set(_tokens(d.caption or "")))
        terms = set(_tokens(text))
        scored = []
        for document in pool:
            if not document.caption:
                continue
            counts = Counter(_tokens(document.caption))
            score = 0.0
            for term in terms:
                tf = counts.get(term, 0)
                if not tf:
                    continue
                idf = math.log(1 + (n_docs - frequency[term] + 0.5) / (frequency[term] + 0.5))
                norm = 1.2 * (1 - 0.75 + 0.75 * lengths[document.image_id] / average)
                score += idf * tf * 2.2 / (tf + norm)
            if score > 0:
                scored.append((document.image_id, score))
        return sorted(scored, key=lambda item: (-item[1], item[0]))

    def search(self, query: SearchQuery) -> SearchPage:
        """Exact BM25 / cosine / fused ranking over the filtered pool, one page of it."""
        self.searches.append(query)
        pool = [
            d
            for d in self.documents.values()
            if d.image_id not in query.exclude_ids
            and all(str(d.metadata.get(f)) in set(v) for f, v in query.filters.items())
        ]
        text_list = self._bm25(query.text, pool) if query.text else []
        vector_list: list[tuple[str, float]] = []
        if query.vector is not None:
            vector_list = sorted(
                (
                    (d.image_id, float(np.dot(d.vector, query.vector)))
                    for d in pool
                    if d.vector is not None
                ),
                key=lambda item: (-item[1], item[0]),
            )
        if query.text and query.vector is not None:
            n = query.candidates
            hits = fuse(text_list[:n], vector_list[:n], query.alpha)
            total = len({i for i, _ in text_list} | {i for i, _ in vector_list})
        elif query.text:
            hits = sort_hits(Hit(i, s, text_score=s) for i, s in text_list)
            total = len(text_list)
        else:
            hits = sort_hits(Hit(i, s, vector_score=s) for i, s in vector_list)
            total = len(vector_list)
        return SearchPage(hits=hits[query.offset : query.offset + query.k], total=total)


# --- corpus -------------------------------------------------------------------------------------

# (id, colour, caption, modality, region)
CORPUS: list[tuple[str, str, str | None, str, str]] = [
    ("red-01", "red", "Chest x-ray showing a left lung nodule", "XR", "chest"),
    ("red-02", "red", None, "XR", "chest"),
    ("red-03", "red", "Right lung nodule on chest CT", "CT", "chest"),
    ("red-04", "red", None, "CT", "chest"),
    ("green-01", "green", "CT of the abdomen with a liver mass", "CT", "abdomen"),
    ("green-02", "green", "Abdominal CT, hepatic mass in the right lobe", "CT", "abdomen"),
    ("green-03", "green", "Liver ultrasound without focal lesion", "US", "abdomen"),
    ("green-04", "green", None, "US", "abdomen"),
    ("blue-01", "blue", "MRI of the knee with a meniscal tear", "MRI", "knee"),
    ("blue-02", "blue", "Knee MRI: torn medial meniscus", "MRI", "knee"),
    ("blue-03", "blue", "Brain MRI with a mass in the left frontal lobe", "MRI", "head"),
    ("blue-04", "blue", None, "MRI", "head"),
    ("yellow-01", "yellow", "Fracture of the distal radius on wrist x-ray", "XR", "wrist"),
    ("yellow-02", "yellow", "Wrist radiograph showing a radius fracture", "XR", "wrist"),
    ("yellow-03", "yellow", "Ankle x-ray with a fracture of the fibula", "XR", "ankle"),
    ("grey-01", "grey", "Normal chest x-ray, no effusion", "XR", "chest"),
    ("grey-02", "grey", "Pleural effusion on the left, chest x-ray", "XR", "chest"),
    ("grey-03", "grey", "Chest CT with bilateral pleural effusion", "CT", "chest"),
]


def make_image(colour: str, variant: int = 0, size: int = 32) -> Image.Image:
    """An image of one colour with a darker quadrant that differs per variant (distinct vectors)."""
    rgb = COLOURS[colour]
    image = Image.new("RGB", (size, size), rgb)
    half = size // 2
    x, y = (variant % 2) * half, ((variant // 2) % 2) * half
    dark = tuple(int(c * (0.55 + 0.1 * (variant // 4))) for c in rgb)
    image.paste(dark, (x, y, x + half, y + half))
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encode an image as JPEG (high quality, so its vector stays close to the PNG's)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def dicom_bytes(image: Image.Image) -> bytes:
    """Encode an image's grey levels as a minimal 8-bit MONOCHROME2 DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("upload.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def corpus_documents(folder: Path, encoder: ColourEncoder) -> list[Document]:
    """Write the corpus images to ``folder``; return their documents (vectors by the encoder)."""
    folder.mkdir(parents=True, exist_ok=True)
    documents = []
    variants: Counter[str] = Counter()
    for image_id, colour, caption, modality, region in CORPUS:
        image = make_image(colour, variants[colour])
        variants[colour] += 1
        path = folder / f"{image_id}.png"
        path.write_bytes(png_bytes(image))
        documents.append(
            Document(
                image_id=image_id,
                caption=caption,
                vector=encoder.encode_images([image])[0],
                image=str(path),
                metadata={"modality": modality, "region": region, "colour": colour},
            )
        )
    return documents


@pytest.fixture(scope="session")
def encoder() -> ColourEncoder:
    """The deterministic colour encoder."""
    return ColourEncoder()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, encoder: ColourEncoder) -> list[Document]:
    """The test corpus: 18 images (4 captionless), their files on disk and vectors."""
    return corpus_documents(tmp_path_factory.mktemp("corpus"), encoder)


@pytest.fixture
def index(corpus: list[Document]) -> MemoryIndex:
    """A fresh brute-force index over the corpus."""
    return MemoryIndex(corpus)


@pytest.fixture
def service(index: MemoryIndex, encoder: ColourEncoder) -> SearchService:
    """The service over the brute-force index and the colour encoder."""
    return SearchService(index, encoder)


@pytest.fixture
def make_upload() -> Any:
    """Return ``(colour, variant, format) -> bytes`` for upload tests."""

    def upload(colour: str, variant: int = 0, fmt: str = "png") -> bytes:
        image = make_image(colour, variant)
        return {"png": png_bytes, "jpeg": jpeg_bytes, "dicom": dicom_bytes}[fmt](image)

    return upload
