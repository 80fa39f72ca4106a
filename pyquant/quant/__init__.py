"""Quantizing models: RTN, QuantLinear, quantize_model, save/load."""
from .rtn import quantize_weight

__all__ = ["quantize_weight"]
