"""Quantizing models: RTN (rtn.py), GPTQ (gptq.py), QuantLinear (linear.py), quantize_model (model.py),
save/load (io.py)."""
from .rtn import quantize_weight

__all__ = ["quantize_weight", "QuantLinear", "use_backend", "set_backend", "quantize_model", "save_quantized",
           "load_quantized", "gptq_quantize_weight", "calibration_ids"]

_LAZY = {"QuantLinear": "linear", "use_backend": "linear", "set_backend": "linear", "quantize_model": "model",
         "save_quantized": "io", "load_quantized": "io", "gptq_quantize_weight": "gptq", "calibration_ids": "gptq"}


def __getattr__(name):  # lazy, so `import pyquant` does not pull in torch.nn modules it does not need
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyquant.quant' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
