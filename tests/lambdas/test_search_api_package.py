"""The search API Lambda's zip content: size within 250 MB, no torch, and it really runs.

``make lambda-package`` builds ``build/search_api`` (pip needs the package index, so tests never
build it); the checks on the real package skip until it exists. The measuring and pruning logic
is tested on small trees here either way.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lambdas.search_api.package import measure, prune
from medsearch.constants import LAMBDA_UNZIPPED_LIMIT_BYTES, SEARCH_API_PACKAGE_DIR

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / SEARCH_API_PACKAGE_DIR
# What the Lambda Python runtime provides without packaging.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")


def test_given_a_tree_then_measure_sums_files_and_flags_forbidden_modules(tmp_path: Path) -> None:
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "core.so").write_bytes(b"x" * 3000)
    (tmp_path / "six.py").write_bytes(b"y" * 500)
    report = measure(tmp_path)
    assert report.total_bytes == 3500 and report.ok
    assert report.largest[0] == ("numpy", 3000)
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    (tmp_path / "transformers-5.0.dist-info").mkdir()
    report = measure(tmp_path)
    assert report.forbidden == ["torch"] and not report.ok


def test_given_installed_distributions_then_prune_removes_exactly_their_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "sympy").mkdir()
    (tmp_path / "sympy" / "__init__.py").write_text("")
    (tmp_path / "isympy.py").write_text("")
    info = tmp_path / "sympy-1.14.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("sympy/__init__.py,sha256=x,1\nisympy.py,sha256=y,1\n")
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("")
    (tmp_path / "numpy-1.26.4.dist-info").mkdir()
    assert prune(tmp_path, ["sympy"]) == ["sympy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numpy", "numpy-1.26.4.dist-info"]


@pytest.fixture(scope="module")
def package() -> Path:
    if not (PACKAGE / "lambdas" / "search_api" / "handler.py").is_file():
        pytest.skip(f"{SEARCH_API_PACKAGE_DIR} not built: run `make lambda-package`")
    return PACKAGE


def test_given_built_package_then_it_fits_the_zip_limit_without_torch(package: Path) -> None:
    report = measure(package)
    assert report.total_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES
    assert report.forbidden == []


def test_given_built_package_alone_then_handler_imports_and_encodes_like_the_dev_stack(
    package: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Given an ONNX export made here (the default exporter) and its vectors in this environment
    from medsearch.model.onnx_encoder import OnnxEncoder
    from medsearch.model.onnx_export import export_onnx

    export_onnx(str(tiny_model_dir), tmp_path / "onnx", int8=True)
    expected = [
        OnnxEncoder(tmp_path / "onnx", int8=int8).encode_texts(["left lung nodule"])
        for int8 in (False, True)
    ]
    # And an interpreter that sees only the standard library, the package and what the runtime
    # provides (boto3/botocore), so nothing leaks in from this machine's environment
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    import importlib

    for name in RUNTIME_PROVIDED:
        (runtime / name).symlink_to(Path(importlib.import_module(name).__file__).parent)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(package)!r}, {str(runtime)!r}]
        import os
        os.environ.update(MEDSEARCH_OPENSEARCH_URL="https://search.example.com",
                          MEDSEARCH_OPENSEARCH_AUTH="none")
        import numpy as np
        import lambdas.search_api.handler
        from medsearch.model.onnx_encoder import load_onnx_encoder
        vectors = [
            load_onnx_encoder({str(tmp_path / "onnx")!r}, int8=int8).encode_texts(
                ["left lung nodule"])
            for int8 in (False, True)
        ]
        np.save({str(tmp_path / "vector.npy")!r}, np.stack(vectors))
        for name in ("torch", "transformers", "tantivy", "faiss"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(name + " is importable from the package")
        """
    )
    # When the handler is imported and the encoder used there
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    # Then it works, with the same vectors as the development stack
    assert result.returncode == 0, result.stderr[-3000:]
    import numpy as np

    np.testing.assert_allclose(np.load(tmp_path / "vector.npy"), np.stack(expected), atol=1e-4)
