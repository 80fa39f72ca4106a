"""Triton kernels, ``pyquant.kernels``: they live inside the package, since a top-level ``kernels``
module would shadow the Hub-kernels distribution of that name, which transformers imports.

They run on NVIDIA GPUs, and on the CPU under ``TRITON_INTERPRET=1`` (how CI tests them).
Imported only by pyquant's Triton backends (pyquant/ops/backends/*_triton.py).
"""
