"""pyquant: is this quantized LLM good enough to ship, and what does it buy?

The public API (DESIGN.md); names are imported lazily so ``import pyquant`` stays light.
"""
from __future__ import annotations

import importlib

from . import ops
from .formats import QuantizedWeight, QuantSpec
from .quant.rtn import quantize_weight

__version__ = "0.1.0"

_LAZY = {
    "load_model": "pyquant.models",
    "QuantLinear": "pyquant.quant.linear",
    "quantize_model": "pyquant.quant.model",
    "gptq_quantize_weight": "pyquant.quant.gptq",
    "calibration_ids": "pyquant.quant.gptq",
    "save_quantized": "pyquant.quant.io",
    "load_quantized": "pyquant.quant.io",
    "ReferenceStore": "pyquant.eval.store",
    "collect_reference": "pyquant.eval.collect",
    "compare": "pyquant.eval.compare",
    "perplexity": "pyquant.eval.perplexity",
    "read_tasks": "pyquant.eval.tasks",
    "evaluate_tasks": "pyquant.eval.tasks",
    "benchmark": "pyquant.perf.benchmark",
}

__all__ = ["QuantSpec", "QuantizedWeight", "quantize_weight", "ops", "__version__", *_LAZY]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
