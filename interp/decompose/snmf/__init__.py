"""SNMF (semi-nonnegative matrix factorization) of MLP activations, the paper's algorithm; see model.py."""

from interp.decompose.snmf.model import SNMF, FitState, SNMFConfig, multiplicative_update, winner_take_all

__all__ = ["SNMF", "FitState", "SNMFConfig", "multiplicative_update", "winner_take_all"]
