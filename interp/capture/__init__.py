"""Capture activations at sites of a model into ActivationStores (batching, resume, rank split)."""

from interp.capture.run import CaptureError, CaptureStats, capture, capture_corpus

__all__ = ["CaptureError", "CaptureStats", "capture", "capture_corpus"]
