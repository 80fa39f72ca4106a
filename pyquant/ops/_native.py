"""Loads the compiled extension ``pyquant._C`` once; every native backend asks here."""
from __future__ import annotations

_C = None
_ERROR = None
try:
    from .. import _C  # noqa: F401
except ImportError as e:  # not built: the reference backend still works, and backend_info says why
    _ERROR = f"pyquant._C is not built ({e}); run `make build`"


def native():
    """The extension module, or None."""
    return _C


def cpu_available() -> "tuple[bool, str]":
    if _C is None:
        return False, _ERROR
    return True, f"isa={_C.cpu_isa()}, codes={_C.cpu_codes()}, bf16 dot={_C.cpu_bf16_dot()}, bf16 gemm={_C.cpu_bf16_gemm()}, vnni={_C.cpu_vnni()}, amx={_C.cpu_amx()}"


def cuda_available() -> "tuple[bool, str]":
    if _C is None:
        return False, _ERROR
    if not _C.built_with_cuda():
        return False, "pyquant._C was built without CUDA (nvcc not found at build time)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""


def triton_available() -> "tuple[bool, str]":
    import os

    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e})"
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1 (interpreter on the CPU)"
    if torch.cuda.is_available():
        return True, ""
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the interpreter on the CPU)"


def triton_devices() -> tuple:
    """Devices the Triton backend accepts: the CPU too when the interpreter is on."""
    import os

    return ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
