"""Decomposers of activations: SNMF, the SAE family and MP-SAE, behind one interface (see base.py)."""

from interp.decompose.base import METHODS, Decomposer, DecomposerError, load_decomposer, method_class

__all__ = ["METHODS", "Decomposer", "DecomposerError", "load_decomposer", "method_class"]
