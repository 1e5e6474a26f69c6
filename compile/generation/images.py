"""Model inputs: deterministic synthetic images, and real photos preprocessed as MobileNetV2 expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnv2_edge.targets.errors import UserError


IMAGE_GRID = 2.0**12


def synthetic_images(count: int, resolution: int, seed: int = 0) -> np.ndarray:
    """[count, res, res, 3] float32 in [-1, 1]: gratings, blobs and colour ramps that differ per image.

    Structured rather than white noise, so a network sees edges, textures and colour, and different
    images give different activations (they serve as calibration data and as test inputs).
    Made in float64 and rounded to a grid of 2^-12: sin, exp and tanh differ in the last bits between
    NumPy's SIMD paths (AVX2, AVX-512), and the images must be the same on every CPU.
    """
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, resolution)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    images = np.empty((count, resolution, resolution, 3), dtype=np.float32)
    for n in range(count):
        img = np.zeros((resolution, resolution, 3))
        for _ in range(3):  # oriented gratings with a colour each
            angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
            wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi + phase)
            img += wave[..., None] * rng.uniform(-0.5, 0.5, 3)
        for _ in range(4):  # soft blobs
            cy, cx, r = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.1, 0.5)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-1, 1, 3)
        img += (xx[..., None] * rng.uniform(-0.5, 0.5, 3)) + rng.normal(0, 0.05, img.shape)
        images[n] = np.round(np.tanh(img) * IMAGE_GRID) / IMAGE_GRID
    return images


def load_photo(path: str | Path, size: int | tuple[int, int], value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[1, H, W, 3] float32 (size: H x W, or one side of a square): resized RGB (bilinear), pixel
    values 0..255 mapped linearly onto value_range (MobileNetV2's [-1, 1] by default), computed as
    the example apps do (examples/)."""
    from PIL import Image, UnidentifiedImageError

    height, width = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((width, height), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"Cannot read the image {path}: {err}. Give a PNG or JPEG file.") from err
    lo, hi = value_range
    return (lo + np.asarray(rgb, dtype=np.float64) / 255.0 * (hi - lo)).astype(np.float32)[None]


def picture_input(path: str | Path, spec, preprocess) -> np.ndarray:
    """A picture as the model input `spec` (a TensorInfo, NHWC) by a manifest's app.preprocess:
    quantized with the input's scale and zero point when the input is integer."""
    x = load_photo(path, (spec.shape[1], spec.shape[2]), preprocess.value_range)
    if spec.quantized:
        return quantize_input(x, spec.scale[0], spec.zero_point[0], spec.dtype)
    return x.astype(spec.dtype)


def quantize_input(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float input to the integer input an int8/uint8 model takes (TFLite's affine rule)."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def model_inputs(inputs, seed: int = 0) -> list[np.ndarray]:
    """One deterministic value per model input (frontend.TensorInfo): a synthetic image for
    NHWC 3-channel inputs, quantized when the input is integer; seeded noise otherwise."""
    rng = np.random.default_rng(seed)
    values = []
    for info in inputs:
        shape = tuple(info.shape)
        is_image = len(shape) == 4 and shape[1] == shape[2] and shape[3] == 3
        x = synthetic_images(shape[0], shape[1], seed) if is_image else rng.normal(0, 1, shape).astype(np.float32)
        if info.dtype in ("int8", "uint8", "int16"):
            if info.quantized:
                x = quantize_input(x, info.scale[0], info.zero_point[0], info.dtype)
            else:
                x = rng.integers(np.iinfo(info.dtype).min, np.iinfo(info.dtype).max, shape).astype(info.dtype)
        values.append(x.astype(info.dtype))
    return values
