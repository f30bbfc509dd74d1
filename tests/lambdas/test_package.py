"""Both Lambdas' zip content: within 250 MB, nothing forbidden, built for python3.12 on AL2023.

``make lambda-package`` builds ``build/search_api`` and ``build/index_loader`` (pip needs the
package index, so tests never build them); the checks on the real packages skip until they exist.
The measuring, pruning and tag logic is tested on small trees here either way. Importing a
package alone needs the runtime's CPython (``python3.12``): that test skips where there is none.
"""

from __future__ import annotations

import importlib
import subprocess
import textwrap
from pathlib import Path

import pytest

from lambdas.package import (
    FUNCTIONS,
    LOADER_FORBIDDEN,
    RUNTIME_PROVIDED,
    PackageConfig,
    find_runtime_python,
    glibc_needed,
    incompatible_wheels,
    main,
    measure,
    pip_command,
    platform_tags,
    prune,
    wheel_tag_fits,
    wheel_tags,
)
from medsearch.constants import (
    INDEX_LOADER_PACKAGE_DIR,
    LAMBDA_PLATFORM,
    LAMBDA_PYTHON_VERSION,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    SEARCH_API_PACKAGE_DIR,
)

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PYTHON = find_runtime_python()


# --- the logic, on small trees ------------------------------------------------------------------


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
    # The loader's list also refuses the encoder's runtime
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("")
    assert measure(tmp_path, LOADER_FORBIDDEN).forbidden == ["onnxruntime", "torch"]
    assert measure(tmp_path).forbidden == ["torch"]


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


def test_given_manylinux_2_28_then_pip_is_also_offered_every_older_manylinux_tag() -> None:
    # pip matches a manylinux_2_x platform exactly, so the older tags are passed one by one
    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(tags)
    assert not [t for t in tags if t.startswith("manylinux_2_29") or "aarch64" in t]
    command = pip_command(FUNCTIONS["search_api"])
    offered = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert offered == platform_tags(LAMBDA_PLATFORM)
    assert command[command.index("--python-version") + 1] == LAMBDA_PYTHON_VERSION == "3.12"
    # And the function's own requirements come with the project's base dependencies
    assert "numpy>=1.26" in command and command[-2:] == [
        "-r",
        str(FUNCTIONS["search_api"].requirements),
    ]


@pytest.mark.parametrize(
    ("tag", "fits"),
    [
        ("cp312-cp312-manylinux_2_28_x86_64", True),
        ("cp312-cp312-manylinux2014_x86_64", True),
        ("cp310-abi3-manylinux_2_17_x86_64", True),
        ("py2.py3-none-any", True),
        ("cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64", True),
        ("cp311-cp311-manylinux_2_17_x86_64", False),  # another CPython's ABI
        ("cp313-abi3-manylinux_2_17_x86_64", False),  # needs a newer CPython
        ("cp312-cp312-manylinux_2_34_x86_64", False),  # newer glibc than the platform tag
        ("cp312-cp312-manylinux_2_28_aarch64", False),
        ("cp312-cp312-musllinux_1_2_x86_64", False),
        ("cp312-cp312-linux_x86_64", False),
        ("pp310-pypy310_pp73-manylinux_2_17_x86_64", False),
    ],
)
def test_given_wheel_tags_then_only_those_for_cpython_312_on_glibc_2_28_fit(
    tag: str, fits: bool
) -> None:
    assert wheel_tag_fits(tag, "3.12", "manylinux_2_28_x86_64") is fits


def test_given_wheel_files_then_a_distribution_without_a_fitting_tag_is_reported(
    tmp_path: Path,
) -> None:
    for name, tags in {
        "numpy-2.5.5": ["cp312-cp312-manylinux_2_27_x86_64", "cp312-cp312-manylinux_2_28_x86_64"],
        "numpy_old-1.26.4": ["cp311-cp311-manylinux_2_17_x86_64"],
    }.items():
        (tmp_path / f"{name}.dist-info").mkdir()
        lines = ["Wheel-Version: 1.0", *(f"Tag: {tag}" for tag in tags)]
        (tmp_path / f"{name}.dist-info" / "WHEEL").write_text("\n".join(lines) + "\n")
    assert incompatible_wheels(tmp_path, "3.12", "manylinux_2_28_x86_64") == ["numpy_old-1.26.4"]


def test_given_a_library_needing_a_newer_glibc_then_the_report_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "fast").mkdir()
    library = tmp_path / "fast" / "_core.cpython-312-x86_64-linux-gnu.so"
    library.write_bytes(b"\x7fELF...GLIBC_2.17\x00memcpy\x00GLIBC_2.27\x00GLIBC_PRIVATE\x00")
    assert glibc_needed(library) == (2, 27)
    assert measure(tmp_path).ok
    library.write_bytes(library.read_bytes() + b"GLIBC_2.38\x00")
    report = measure(tmp_path)
    assert report.too_new == {"fast": (2, 38)} and not report.ok


def test_given_an_unknown_function_then_main_refuses_it(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["search_ap", "--measure-only"])
    assert "search_api, index_loader" in capsys.readouterr().err


# --- the real packages --------------------------------------------------------------------------


def built(name: str) -> PackageConfig:
    config = FUNCTIONS[name]
    if not (config.dest / "lambdas" / name / "handler.py").is_file():
        pytest.skip(f"{config.dest.relative_to(REPO)} not built: run `make lambda-package`")
    return config


@pytest.fixture(params=sorted(FUNCTIONS))
def package(request: pytest.FixtureRequest) -> PackageConfig:
    return built(request.param)


def test_the_two_packages_are_built_where_the_infra_app_deploys_them_from() -> None:
    assert FUNCTIONS["search_api"].dest == REPO / SEARCH_API_PACKAGE_DIR
    assert FUNCTIONS["index_loader"].dest == REPO / INDEX_LOADER_PACKAGE_DIR


def test_given_built_package_then_it_fits_the_limit_with_nothing_forbidden(
    package: PackageConfig,
) -> None:
    report = measure(package.dest, package.forbidden)
    assert report.total_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES
    assert report.forbidden == [] and report.incompatible == [] and report.too_new == {}
    # boto3/botocore are the runtime's: a copy here would shadow it
    installed = {name.rsplit("-", 1)[0].lower() for name in wheel_tags(package.dest)}
    assert not installed & set(RUNTIME_PROVIDED)
    assert not [p for p in package.dest.iterdir() if p.name in RUNTIME_PROVIDED]


def test_given_built_package_then_its_wheels_are_for_cpython_312_and_glibc_up_to_2_28(
    package: PackageConfig,
) -> None:
    tags = wheel_tags(package.dest)
    numpy = next(tag for name, tag in tags.items() if name.startswith("numpy-"))
    # The old runtime's pins are gone: numpy 2 for CPython 3.12
    numpy_version = next(n for n in tags if n.startswith("numpy-")).split("-")[1]
    assert int(numpy_version.split(".")[0]) >= 2
    assert all(t.startswith("cp312-cp312-") for t in numpy)
    binary = {name: t for name, t in tags.items() if not any(x.endswith("-any") for x in t)}
    assert binary, "no binary wheel at all: the platform options were not applied"
    for name, wheel in binary.items():
        assert any(wheel_tag_fits(t, "3.12", "manylinux_2_28_x86_64") for t in wheel), name
    report = measure(package.dest, package.forbidden)
    assert report.glibc and max(report.glibc.values()) <= (2, 28)


def test_given_the_search_api_package_then_it_has_a_current_encoder_runtime() -> None:
    tags = wheel_tags(built("search_api").dest)
    onnxruntime = next(name for name in tags if name.startswith("onnxruntime-"))
    major, minor = (int(part) for part in onnxruntime.split("-")[1].split(".")[:2])
    assert (major, minor) >= (1, 18)
    assert any(name.startswith("tokenizers-") for name in tags)


def test_given_the_loader_package_then_it_has_no_encoder_runtime() -> None:
    config = built("index_loader")
    tags = wheel_tags(config.dest)
    assert not [n for n in tags if n.startswith(("onnxruntime-", "tokenizers-", "mangum-"))]
    assert any(n.startswith("opensearch_py-") for n in tags)
    assert any(n.startswith("aws_xray_sdk-") for n in tags)  # its tracer


def test_given_built_package_then_it_carries_the_project_code_of_its_function(
    package: PackageConfig,
) -> None:
    def modules(root: Path, folder: str) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in (root / folder).rglob("*.py")
            if "__pycache__" not in p.parts
        }

    dest = package.dest
    assert modules(dest, "medsearch") == modules(REPO, "medsearch"), "stale: make lambda-package"
    own = f"lambdas/{package.name}"
    assert modules(dest, "lambdas") == {"lambdas/__init__.py"} | modules(REPO, own)
    # Bytecode of this machine's interpreter would be dead weight on the runtime's
    runtime_tag = "cpython-" + LAMBDA_PYTHON_VERSION.replace(".", "")
    assert not [p for p in dest.rglob("*.pyc") if p.suffixes[-2] != f".{runtime_tag}"]
    assert not list(dest.rglob("requirements.txt"))


@pytest.mark.skipif(RUNTIME_PYTHON is None, reason=f"no python{LAMBDA_PYTHON_VERSION} here")
def test_given_built_package_alone_then_handler_imports_and_encodes_like_the_dev_stack(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    package = built("search_api").dest
    # Given an ONNX export made here (the default exporter) and its vectors in this environment
    from medsearch.model.onnx_encoder import OnnxEncoder
    from medsearch.model.onnx_export import export_onnx

    export_onnx(str(tiny_model_dir), tmp_path / "onnx", int8=True)
    expected = [
        OnnxEncoder(tmp_path / "onnx", int8=int8).encode_texts(["left lung nodule"])
        for int8 in (False, True)
    ]
    # And the runtime's CPython seeing only its standard library, the package and what the
    # runtime provides (boto3/botocore), so nothing leaks in from this machine's environment
    runtime = runtime_provided(tmp_path)
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
    result = run_isolated(script, tmp_path)
    # Then it works, with the same vectors as the development stack
    assert result.returncode == 0, result.stderr[-3000:]
    import numpy as np

    np.testing.assert_allclose(np.load(tmp_path / "vector.npy"), np.stack(expected), atol=1e-4)


@pytest.mark.skipif(RUNTIME_PYTHON is None, reason=f"no python{LAMBDA_PYTHON_VERSION} here")
def test_given_built_loader_package_alone_then_its_handler_imports(tmp_path: Path) -> None:
    package = built("index_loader").dest
    runtime = runtime_provided(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(package)!r}, {str(runtime)!r}]
        import os
        os.environ.update(MEDSEARCH_OPENSEARCH_URL="https://search.example.com",
                          MEDSEARCH_MANIFEST_URL="s3://bucket/data/{{run_id}}/manifest.jsonl",
                          MEDSEARCH_OPENSEARCH_AUTH="none", POWERTOOLS_TRACE_DISABLED="true")
        import lambdas.index_loader.handler as handler
        handler.get_loader()
        for name in ("onnxruntime", "tokenizers", "torch", "tantivy"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(name + " is importable from the package")
        """
    )
    result = run_isolated(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def runtime_provided(tmp_path: Path) -> Path:
    """A folder holding only what the Lambda runtime provides (links to this machine's copy)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PROVIDED:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        (runtime / name).symlink_to(Path(module.__file__).parent)
    return runtime


def run_isolated(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in the runtime's CPython, isolated from this environment's packages."""
    assert RUNTIME_PYTHON is not None
    # -B: no bytecode written into the package (the build stays as `make lambda-package` left it)
    command = [RUNTIME_PYTHON, "-I", "-S", "-B", "-c", script]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
