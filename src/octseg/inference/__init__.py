"""Inference: the one forward path (``forward``: batching, resize, flip TTA, argmax), the
:class:`~octseg.inference.predictor.Predictor` API with PyTorch and ONNX Runtime backends
(``predictor``), small-component removal (``postprocess``), ONNX export (``export``), ensembles
of checkpoints or CV folders (``ensemble``), and ``octseg predict``'s loop over files (``run``).
Nothing here imports training code."""

from octseg.inference.forward import batched, predict_labels, predict_logits

__all__ = ["batched", "predict_labels", "predict_logits"]
