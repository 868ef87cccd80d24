"""interp: capture, decompose, browse and steer the activations of language models."""

__version__ = "0.1.0"
