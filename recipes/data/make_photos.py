"""Generate the calibration photographs in ``recipes/data/photos/`` (committed output).

The ResNet-18 recipe calibrates int8 quantization on real photographs rather than noise.
No image is downloaded: every source photo ships inside a Python package.

Sources
-------
* scikit-learn (always available, it is a test dependency):
  ``sklearn.datasets.load_sample_images()`` -> ``china`` and ``flower``
  (both CC-BY 2.0, Flickr users danielbuechele and vultilion, see
  ``sklearn/datasets/images/README.txt``).
* scikit-image, optional (not a bmbuild dependency): the real colour photographs bundled
  in its wheel, ``skimage.data.astronaut`` (NASA, public domain), ``chelsea`` (CC0),
  ``coffee`` (CC0), ``rocket`` (SpaceX, public domain) and ``immunohistochemistry``
  (no known copyright restrictions).

The committed files were produced with all seven sources (scikit-learn 1.9.1,
scikit-image 0.26.0, Pillow 13.0.0)::

    pip install --target /tmp/skimage scikit-image
    python recipes/data/make_photos.py --skimage-path /tmp/skimage

``--skimage-path`` is *appended* to ``sys.path`` so the project's own numpy/Pillow win.
Without scikit-image the script still works and spreads the same number of crops over the
two scikit-learn photos only (the result then differs from the committed set).

Each output is a 256x256 RGB JPEG (quality 90) cut from a source photo: the first crop of
every source is its centred full-height square, the others are squares of 50-90% of the
short side at quasi-random (Halton) positions, every other pair horizontally flipped.
Files are named ``<source>_<index>.jpg`` (index zero-padded, per source). Everything is
deterministic; existing ``*.jpg`` files in the output folder are removed first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 256
QUALITY = 90
TOTAL = 96
SCALES = (0.9, 0.75, 0.6, 0.5, 0.8, 0.65)  # fraction of the short side, after the first crop
MIN_CROP = 160  # pixels; small sources are not blown up more than 1.6x
SKIMAGE_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def _halton(index: int, base: int) -> float:
    result, f = 0.0, 1.0
    while index > 0:
        f /= base
        result += f * (index % base)
        index //= base
    return result


def load_sources(skimage_path: str | None = None) -> dict[str, np.ndarray]:
    """Return ``{name: HxWx3 uint8}`` in a fixed order."""
    from sklearn.datasets import load_sample_images

    sources: dict[str, np.ndarray] = {}
    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images):
        sources[Path(filename).stem] = np.asarray(image, dtype=np.uint8)

    if skimage_path:
        sys.path.append(skimage_path)
    try:
        import skimage.data as skdata
    except ImportError:
        print("scikit-image not importable: using the scikit-learn photos only", file=sys.stderr)
        return sources
    for name in SKIMAGE_SOURCES:
        image = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
        assert image.ndim == 3 and image.shape[2] == 3, (name, image.shape)
        sources[name] = image
    return sources


def crop_boxes(height: int, width: int, count: int) -> list[tuple[int, int, int, bool]]:
    """``count`` distinct ``(left, top, side, flip)`` square crops of a ``height x width`` image."""
    short = min(height, width)
    boxes = [((width - short) // 2, (height - short) // 2, short, False)]
    k = 1
    while len(boxes) < count:
        side = max(min(MIN_CROP, short), int(round(SCALES[(k - 1) % len(SCALES)] * short)))
        left = int(round(_halton(k, 2) * (width - side)))
        top = int(round(_halton(k, 3) * (height - side)))
        flip = (k // 2) % 2 == 1
        box = (left, top, side, flip)
        if box not in boxes:
            boxes.append(box)
        k += 1
    return boxes


def render(image: np.ndarray, box: tuple[int, int, int, bool]) -> Image.Image:
    left, top, side, flip = box
    pil = Image.fromarray(image).crop((left, top, left + side, top + side))
    pil = pil.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    if flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return pil


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "photos")
    parser.add_argument("--total", type=int, default=TOTAL)
    parser.add_argument("--skimage-path", default=None, help="folder holding scikit-image (appended to sys.path)")
    args = parser.parse_args(argv)

    sources = load_sources(args.skimage_path)
    names = list(sources)
    per_source = [args.total // len(names) + (1 if i < args.total % len(names) else 0) for i in range(len(names))]

    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.jpg"):
        stale.unlink()

    written, total_bytes = 0, 0
    for name, count in zip(names, per_source):
        image = sources[name]
        for index, box in enumerate(crop_boxes(image.shape[0], image.shape[1], count)):
            path = args.out / f"{name}_{index:03d}.jpg"
            render(image, box).save(path, format="JPEG", quality=QUALITY, optimize=True)
            written += 1
            total_bytes += path.stat().st_size
    print(f"wrote {written} photos from {len(names)} sources ({', '.join(names)}) "
          f"to {args.out}: {total_bytes / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
