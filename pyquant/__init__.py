"""pyquant: is this quantized LLM good enough to ship, and what does it buy?"""
from __future__ import annotations

from .formats import QuantizedWeight, QuantSpec
from .quant.rtn import quantize_weight
from . import ops

__version__ = "0.1.0"
__all__ = ["QuantSpec", "QuantizedWeight", "quantize_weight", "ops", "__version__"]
