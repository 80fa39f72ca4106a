"""What pyquant puts on sys.path must not shadow other distributions' top-level modules."""
import importlib.util
import pathlib
import subprocess
import sys

import pyquant

SOURCE_ROOT = pathlib.Path(pyquant.__file__).resolve().parent.parent


def test_triton_kernels_live_inside_the_package():
    import pyquant.kernels

    package_dir = pathlib.Path(pyquant.__file__).resolve().parent
    assert pathlib.Path(pyquant.kernels.__file__).resolve().parent == package_dir / "kernels"


def test_no_top_level_kernels_module_from_pyquant():
    # transformers (5.25 on) depends on `kernels`, the Hub-kernels distribution, and imports from it. A
    # `kernels` package of pyquant's own shadowed it (the editable install puts the source root on
    # sys.path, `python -m pytest` the working directory) and every model load failed.
    code = "import importlib.util; s = importlib.util.find_spec('kernels'); print(s.origin if s else '')"
    found = [subprocess.run([sys.executable, "-c", code], cwd=SOURCE_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()]
    spec = importlib.util.find_spec("kernels")
    found.append(spec.origin if spec is not None and spec.origin else "")
    for origin in filter(None, found):
        shadowed_by = pathlib.Path(origin).resolve().parent.parent
        assert shadowed_by != SOURCE_ROOT, f"pyquant's source tree shadows `kernels`: {origin}"
