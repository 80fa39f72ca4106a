"""Kernel ops behind one dispatcher: qmatmul, stream_logprobs, stream_kl_exact.

Backends register themselves on import (reference everywhere; cpu from pyquant._C; cuda and
triton on GPUs). ``backend_info()`` says which are built/available and which each op would use.
"""
from ._registry import available_backends, backend_info
from .qmatmul import qmatmul
from . import backends  # noqa: F401,E402  (registers the native and Triton backends)

__all__ = ["available_backends", "backend_info", "qmatmul"]
