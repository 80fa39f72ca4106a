"""Triton kernels. Installed as ``pyquant.kernels`` (never a top-level ``kernels`` module).

They run on NVIDIA GPUs, and on the CPU under ``TRITON_INTERPRET=1`` (how CI tests them).
Import only from pyquant's Triton backend (pyquant/ops/backend_triton.py).
"""
