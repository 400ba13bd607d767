"""Image preprocessing to what an input manipulation expects: float32 NHWC in [0, 1].

Pure numpy, so a data pipeline never competes with the model for the accelerator.
:func:`resize` is bilinear with antialiasing (a triangle kernel widened by the
downscaling factor), numerically the same as ``jax.image.resize(..., "linear",
antialias=True)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["resize", "to_float", "to_rgb"]

ResizeMode = Literal["stretch", "crop"]


def to_float(images: np.ndarray) -> np.ndarray:
    """Integer images (uint8 0..255, uint16 0..65535) to float32 in [0, 1]; floats pass through.

    Float inputs are assumed to be in [0, 1] already and are only cast to float32.
    """
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.integer):
        if images.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"to_float: images must be uint8, uint16 or float, got {images.dtype}")
        return images.astype(np.float32) / np.float32(np.iinfo(images.dtype).max)
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"to_float: images must be uint8, uint16 or float, got {images.dtype}")
    return images.astype(np.float32, copy=False)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Grayscale ``(..., H, W, 1)`` to RGB ``(..., H, W, 3)`` by repeating the channel; RGB passes through."""
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"to_rgb: images must be (..., H, W, C), got shape {images.shape}")
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels != 1:
        raise ValueError(f"to_rgb: images must have 1 or 3 channels, got {channels} (shape {images.shape})")
    return np.repeat(images, 3, axis=-1)


def _weights(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of an antialiased linear resize along one axis.

    Output pixel ``j`` samples the input at ``u = (j + 1/2) · in/out − 1/2`` with the
    triangle kernel ``max(0, 1 − |u − i| / w)``, ``w = max(1, in/out)`` (so a
    downscale averages over every input pixel it covers), rows normalised to 1.
    """
    ratio = in_size / out_size
    width = max(1.0, ratio)
    centers = (np.arange(out_size) + 0.5) * ratio - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(centers[:, None] - np.arange(in_size)[None, :]) / width)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize_exact(images: np.ndarray, height: int, width: int) -> np.ndarray:
    *lead, h, w, c = images.shape
    out = images.reshape(-1, h, w * c)
    if h != height:  # (height, h) @ (N, h, w·c), then (width, w) @ (N·height, w, c).
        out = np.matmul(_weights(h, height), out)
    out = out.reshape(-1, w, c)
    if w != width:
        out = np.matmul(_weights(w, width), out)
    return out.reshape(*lead, height, width, c).astype(np.float32, copy=False)


def resize(images: np.ndarray, size: int | tuple[int, int], *, mode: ResizeMode = "stretch") -> np.ndarray:
    """Resize float images ``(..., H, W, C)`` to ``size`` (bilinear, antialiased).

    Args:
      images: float array ``(..., H, W, C)`` (apply :func:`to_float` first).
      size: the output side ``S`` (square) or ``(height, width)``.
      mode: ``"stretch"`` resizes straight to ``size`` (aspect ratio not kept; what
        the visual-reprogramming reference code does with ``Resize((S, S))``);
        ``"crop"`` resizes the shorter side to fit, then takes the central crop.

    Returns:
      float32 ``(..., height, width, C)``; values stay within the input's range.
    """
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"resize: images must be (..., H, W, C), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"resize: images must be float (use to_float first), got {images.dtype}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize: size must be positive, got {size}")
    if mode == "stretch":
        return _resize_exact(images, height, width)
    if mode != "crop":
        raise ValueError(f"resize: mode must be 'stretch' or 'crop', got {mode!r}")
    h, w = images.shape[-3], images.shape[-2]
    scale = max(height / h, width / w)
    mid_h, mid_w = max(height, round(h * scale)), max(width, round(w * scale))
    out = _resize_exact(images, mid_h, mid_w)
    top, left = (mid_h - height) // 2, (mid_w - width) // 2
    return out[..., top : top + height, left : left + width, :]
