"""The embeddable C++ API (csrc/include/pyquant/) works without Python: the C++ libraries build
with the Python extension switched off (Python and pybind11 not even looked for), install as a
CMake package, and examples/embed/ (a plain C++ program that packs weights in the documented
formats) links it and matches its own double-precision results. The example exits non-zero on
any mismatch."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler")
COMMON = ["-DCMAKE_BUILD_TYPE=Release"] + (["-G", "Ninja"] if shutil.which("ninja") else [])


def _run(args, timeout=900):
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, " ".join(map(str, args)) + "\n" + r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def _build(src, build, *flags):
    _run(["cmake", "-S", str(src), "-B", str(build), *COMMON, *flags])
    _run(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2)])


def _check_example(exe):
    out = _run([str(exe)])
    assert "all checks passed" in out and "FAIL" not in out, out
    assert out.count(" ok\n") == 5 and "group_size 48 rejected: ok" in out, out


def _install_and_build_example(tmp_path, cuda):
    lib, prefix = tmp_path / "build-pyquant", tmp_path / "prefix"
    _build(ROOT, lib, "-DPYQUANT_PYTHON=OFF", f"-DPYQUANT_CUDA={cuda}",
           "-DCMAKE_DISABLE_FIND_PACKAGE_Python=ON", "-DCMAKE_DISABLE_FIND_PACKAGE_pybind11=ON")
    _run(["cmake", "--install", str(lib), "--prefix", str(prefix)])
    installed = {str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file()}
    assert {"include/pyquant/pyquant.h", "include/pyquant/qmatmul.h", "include/pyquant/stream.h"} <= installed
    libdir = next(p.rsplit("/", 1)[0] for p in installed if p.endswith("/libpyquant_cpu.a"))  # lib or lib64
    assert f"{libdir}/cmake/pyquant/pyquantConfig.cmake" in installed
    assert (f"{libdir}/libpyquant_cuda.a" in installed) == (cuda == "ON")
    assert not any("_C" in p or p.endswith(".so") for p in installed)  # no Python extension
    example = tmp_path / "build-example"
    _build(os.path.join(ROOT, "examples", "embed"), example, f"-DCMAKE_PREFIX_PATH={prefix}")
    _check_example(example / "embed_example")
    return example


def test_installed_package_links_without_python(tmp_path):
    example = _install_and_build_example(tmp_path, cuda="OFF")
    assert not (example / "embed_cuda_devices").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_installed_package_with_cuda_runs_without_a_gpu(tmp_path):
    """pyquant::cuda links the CUDA runtime statically: a program using it starts (and counts the
    devices, 0 here) on a machine without a GPU or driver."""
    example = _install_and_build_example(tmp_path, cuda="ON")
    out = _run([str(example / "embed_cuda_devices")])
    assert "pyquant CUDA library linked:" in out and "CUDA device(s) visible" in out, out


@pytest.mark.slow
def test_add_subdirectory_builds_the_libraries_only(tmp_path):
    build = tmp_path / "build-example"
    _build(os.path.join(ROOT, "examples", "embed"), build, f"-DPYQUANT_SOURCE_DIR={ROOT}", "-DPYQUANT_CUDA=OFF")
    cache = (build / "CMakeCache.txt").read_text()
    assert "PYQUANT_PYTHON:BOOL=OFF" in cache and "pybind11_DIR" not in cache
    _check_example(build / "embed_example")
