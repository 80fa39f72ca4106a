"""One module per (op, backend): importing it registers the backend with ops._registry.

qmatmul_cpu / qmatmul_cuda / qmatmul_triton, stream_cpu / stream_cuda / stream_triton.
Each module must import cleanly when its backend is unavailable (it then registers with an
``available`` probe that says why, see ops/_native.py).
"""
import importlib

for _name in ("qmatmul_cpu", "qmatmul_cuda", "qmatmul_triton", "stream_cpu", "stream_cuda", "stream_triton"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # a backend module not written yet
        if e.name != f"{__name__}.{_name}":
            raise
