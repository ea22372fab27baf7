"""Class-activation maps of a YOLO detector with pytorch-grad-cam's EigenCAM (Muhammad and Yeasin, IJCNN 2020,
arXiv 2008.00299): the first principal component of the feature maps the Detect head reads (P3, P4, P5), each scaled
to the input and to [0, 1], averaged. Gradient-free, so it needs no choice of class or box as a target.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ("eigencam",)


class _FirstOutput(nn.Module):
    """The detection tensor (B, 4 + nc, anchors) of a model that returns (predictions, features) in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        while isinstance(out, (list, tuple)):  # segmentation and pose heads nest their detection tensor one deeper
            out = out[0]
        return out


def eigencam(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """EigenCAM of an Ultralytics detection model over the feature maps its Detect head reads.

    Args:
        model (ultralytics.nn.tasks.DetectionModel): The model (its last layer is the head, `head.f` its inputs).
        image (torch.Tensor): Preprocessed input (B, 3, H, W) as the model takes it (letterboxed, 0-1 RGB).

    Returns:
        (numpy.ndarray): Maps in [0, 1], shape (B, H, W), at the input's resolution.

    Example:
        >>> cam = eigencam(YOLO("yolov8n-ema.yaml").model, torch.rand(1, 3, 64, 64))
    """
    from pytorch_grad_cam import EigenCAM

    head = model.model[-1]
    targets = [model.model[i] for i in head.f]
    cam = EigenCAM(_FirstOutput(model), targets)
    try:
        with torch.no_grad():
            return cam(image.float(), targets=None)
    finally:
        cam.activations_and_grads.release()
