"""Run any exported artifact through one interface (see :class:`Predictor`)."""

from ._base import Predictor, TensorSpec

__all__ = ["Predictor", "TensorSpec"]
