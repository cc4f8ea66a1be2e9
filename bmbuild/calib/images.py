"""Image decoding and the vendor-compatible preprocessing of one calibration image.

Pillow is imported only inside `decode_image` so that importing bmbuild.calib stays cheap and
works without the `reference` extra. Resizing is done here in numpy, the way OpenCV's
INTER_LINEAR does it (half-pixel centres, no antialiasing, 8-bit result), because the vendor
tool resizes with OpenCV; Pillow's resize antialiases when shrinking and would differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bmbuild.calib.config import Preprocess, Size
from bmbuild.calib.sources import IMAGE_SUFFIXES
from bmbuild.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "decode_image", "letterbox", "load_image", "preprocess_image", "resize_bilinear",
           "resized_shape"]


def decode_image(path: Path, channels: int) -> np.ndarray:
    """Decode to uint8 H,W,C in RGB order (or H,W,1 grey), EXIF orientation applied like
    cv2.imread; alpha is dropped, not composited, also like cv2.imread."""
    from PIL import Image, ImageOps  # lazy: optional dependency, heavy import

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image: {exc}", file=path) from exc
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _linear_taps(dst: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV INTER_LINEAR along one axis."""
    f = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    i0 = np.floor(f).astype(np.int64)
    frac = f - i0
    low = i0 < 0
    i0[low], frac[low] = 0, 0.0
    high = i0 >= src - 1
    i0[high], frac[high] = src - 1, 0.0
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, frac


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 H,W,C like cv2.resize(INTER_LINEAR): within one level of OpenCV's
    fixed-point result."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    y0, y1, fy = _linear_taps(height, h)
    x0, x1, fx = _linear_taps(width, w)
    src = img.astype(np.float64)
    fy = fy[:, None, None]
    rows = src[y0] * (1.0 - fy) + src[y1] * fy
    fx = fx[None, :, None]
    out = rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_shape(h: int, w: int, resize: Size) -> tuple[int, int]:
    """Target (h, w): an int sets the short side (long side truncated, like torchvision)."""
    if not isinstance(resize, int):
        return _pair(resize)
    if h <= w:
        return resize, max(1, int(resize * w / h))
    return max(1, int(resize * h / w)), resize


def letterbox(img: np.ndarray, height: int, width: int, pad_value: int, pad_type: str) -> np.ndarray:
    """Resize keeping the aspect ratio into height x width and pad, as tpu-mlir's
    ImageResizeTool.letterbox_resize: scale min(width/w, height/h), sizes truncated, the image
    centred (offsets floor(padding / 2)) or at the top-left corner (`normal`)."""
    h, w = img.shape[:2]
    ratio = min(width / w, height / h)
    new_h, new_w = max(1, int(h * ratio)), max(1, int(w * ratio))
    resized = resize_bilinear(img, new_h, new_w)
    out = np.full((height, width, img.shape[2]), pad_value, dtype=np.uint8)
    top, left = ((height - new_h) // 2, (width - new_w) // 2) if pad_type == "center" else (0, 0)
    out[top:top + new_h, left:left + new_w] = resized
    return out


def preprocess_image(img: np.ndarray, pre: Preprocess, path: Path,
                     expected_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 RGB H,W,C -> float32 sample of `expected_shape` (C,H,W or H,W,C per pre.layout)."""
    if pre.layout == "NCHW":
        channels, out_h, out_w = expected_shape
    else:
        out_h, out_w, channels = expected_shape
    if channels == 3 and not pre.bgr2rgb:
        img = img[:, :, ::-1]  # RGB -> BGR, as OpenCV decodes
    if pre.keep_aspect_ratio:
        img = letterbox(img, *(_pair(pre.resize) if pre.resize is not None else (out_h, out_w)),
                        pre.pad_value, pre.pad_type)
    elif pre.resize is not None:
        img = resize_bilinear(img, *resized_shape(img.shape[0], img.shape[1], pre.resize))
    if pre.center_crop is not None:
        ch, cw = _pair(pre.center_crop)
        h, w = img.shape[:2]
        if ch > h or cw > w:
            raise DataError(f"image is {h}x{w} after resizing, smaller than the centre crop "
                            f"{ch}x{cw}", file=path)
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[top:top + ch, left:left + cw]
    if img.shape[:2] != (out_h, out_w):
        raise DataError(f"image preprocesses to {img.shape[0]}x{img.shape[1]} but the model "
                        f"input needs {out_h}x{out_w} (set preprocess.resize / center_crop)",
                        file=path)
    try:
        mean, mult = pre.channel_values(channels)
    except ValueError as exc:
        raise DataError(str(exc), file=path) from exc
    out = (img.astype(np.float32) - np.asarray(mean, np.float32)) * np.asarray(mult, np.float32)
    if pre.layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_image(path: Path, pre: Preprocess, expected_shape: tuple[int, ...]) -> np.ndarray:
    """Decode and preprocess one image file into one float32 sample."""
    if len(expected_shape) != 3:
        raise DataError(f"images need a 3-d input sample shape, the model input is "
                        f"{expected_shape}", file=path)
    channels = expected_shape[0] if pre.layout == "NCHW" else expected_shape[2]
    if channels not in (1, 3):
        raise DataError(f"images give 1 or 3 channels, the model input has {channels} "
                        f"(layout {pre.layout}, shape {expected_shape})", file=path)
    return preprocess_image(decode_image(path, channels), pre, path, expected_shape)
