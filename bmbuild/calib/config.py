"""Recipe models for calibration data and threshold selection.

These are pydantic models because the recipe JSON schema (for editors) is generated from them:
every field has a description and unknown keys are rejected so that typos fail loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bmbuild.calib.registry import METHOD_NAMES
from bmbuild.calib.registry import description as methods_description

Size = int | tuple[int, int]
LETTERBOX_FIELDS = {"keep_aspect_ratio", "pad_value", "pad_type"}


def _check_size(value: Size | None, name: str) -> Size | None:
    if value is None:
        return None
    sizes = (value,) if isinstance(value, int) else value
    if any(s <= 0 for s in sizes):
        raise ValueError(f"{name} sizes must be positive, got {value!r}")
    return value


class Preprocess(BaseModel):
    """How an image file becomes one network input sample.

    Follows the vendor's `--cali_image_preprocess` (the vendor decodes with OpenCV, which yields
    BGR, and feeds BGR unless told `bgr2rgb`): the image is decoded (EXIF orientation applied),
    put in BGR channel order unless `bgr2rgb` is true, resized (OpenCV-style bilinear on 8-bit
    pixels; or letterboxed like tpu-mlir's `--keep_aspect_ratio`), centre-cropped, then
    `(pixel - mean) * scale` (or `/ std`) per channel in the *output* channel order, and laid out
    as C,H,W (or H,W,C).
    """

    model_config = ConfigDict(extra="forbid")

    resize: Size | None = Field(
        None,
        description="Resize before cropping. An integer sets the short side and keeps the aspect "
        "ratio (long side truncated like torchvision); [height, width] resizes exactly. "
        "Bilinear like OpenCV INTER_LINEAR (no antialiasing), rounded to 8-bit pixels.",
    )
    center_crop: Size | None = Field(
        None,
        description="Centre crop after resizing: an integer for a square, or [height, width]. "
        "The offset is floor((size - crop) / 2).",
    )
    mean: list[float] = Field(
        default_factory=lambda: [0.0, 0.0, 0.0],
        description="Per-channel mean in the 0..255 pixel range, subtracted first. In the output "
        "channel order: B,G,R unless bgr2rgb is true (e.g. [104, 117, 123] for Caffe models). "
        "One value applies to every channel.",
        min_length=1,
    )
    scale: float | list[float] = Field(
        1.0,
        description="Multiplied after the mean is subtracted, one value or one per channel "
        "(e.g. 0.0078125, or 1/255 for 0..1 inputs).",
    )
    std: list[float] | None = Field(
        None,
        description="Alternative to scale: divide by this per-channel standard deviation (0..255 "
        "range, output channel order). Cannot be combined with a scale other than 1.",
        min_length=1,
    )
    bgr2rgb: bool = Field(
        False,
        description="Feed R,G,B channel order (torchvision-trained models). False feeds B,G,R "
        "like the vendor tool does by default.",
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW", description="Memory layout of the network input."
    )
    keep_aspect_ratio: bool = Field(
        False,
        description="Letterbox instead of stretching (tpu-mlir's --keep_aspect_ratio): scale the "
        "image by min(height/h, width/w) into resize [height, width] (default: the model input's "
        "size), sizes truncated, and fill the rest with pad_value. Needs a [height, width] resize "
        "or none (an integer resize keeps the ratio already).",
    )
    pad_value: int = Field(
        0, ge=0, le=255,
        description="Pixel value (0..255, before mean and scale) of keep_aspect_ratio's padding "
        "(tpu-mlir --pad_value).",
    )
    pad_type: Literal["center", "normal"] = Field(
        "center",
        description="Where keep_aspect_ratio places the resized image (tpu-mlir --pad_type): center "
        "(offset floor(padding / 2) on each axis) or normal (top-left corner, padding right and "
        "bottom).",
    )

    @field_validator("resize")
    @classmethod
    def _resize_positive(cls, v: Size | None) -> Size | None:
        return _check_size(v, "resize")

    @field_validator("center_crop")
    @classmethod
    def _crop_positive(cls, v: Size | None) -> Size | None:
        return _check_size(v, "center_crop")

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not s > 0 for s in v):
            raise ValueError(f"std values must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _scale_or_std(self) -> Preprocess:
        scales = self.scale if isinstance(self.scale, list) else [self.scale]
        if not scales:
            raise ValueError("scale must not be an empty list")
        if self.std is not None and any(s != 1.0 for s in scales):
            raise ValueError("give either scale or std, not both")
        if self.keep_aspect_ratio and isinstance(self.resize, int):
            raise ValueError("keep_aspect_ratio letterboxes into resize [height, width]; an integer "
                             "resize (the short side) keeps the aspect ratio already")
        if not self.keep_aspect_ratio and (self.pad_value != 0 or self.pad_type != "center"):
            raise ValueError("pad_value and pad_type apply only with keep_aspect_ratio: true")
        return self

    def key_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """What an action key holds: the letterbox settings only when keep_aspect_ratio is on, so
        recipes that never set them keep their keys."""
        return self.model_dump(mode=mode, exclude=None if self.keep_aspect_ratio else LETTERBOX_FIELDS)

    def channel_values(self, channels: int) -> tuple[list[float], list[float]]:
        """Per-channel (mean, multiplier) for `channels` channels; ValueError if lengths clash."""
        mult = [1.0 / s for s in self.std] if self.std is not None else (
            self.scale if isinstance(self.scale, list) else [self.scale])

        def expand(values: list[float], name: str) -> list[float]:
            if len(values) == 1:
                return list(values) * channels
            if len(values) != channels:
                raise ValueError(f"preprocess.{name} has {len(values)} values but the input has "
                                 f"{channels} channels")
            return list(values)

        return expand(self.mean, "mean"), expand(mult, "std" if self.std is not None else "scale")


class InputCalibration(BaseModel):
    """Where one input of a multi-input model takes its calibration samples from (`calibration.inputs.<name>`)."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(
        None,
        description="This input's samples: a folder (images, or .npy/.npz files holding one sample each) or one "
        ".npz/.npy with samples stacked on axis 0. Default: calibration.data. Samples of different sources are "
        "paired by their sorted order (folders: by file path without its suffix).",
    )
    key: str | None = Field(
        None, description="Name of this input's array inside .npz files. Default: the input's name."
    )
    preprocess: Preprocess | None = Field(
        None, description="Image preprocessing of this input (required when its data are images)."
    )


class CalibrationConfig(BaseModel):
    """Where the calibration samples come from and how activation thresholds are chosen.

    `data` is either a folder (images .jpg/.jpeg/.png, or .npy/.npz files holding one
    preprocessed sample each; searched recursively, hidden files skipped, never mixed) or one
    .npz (or .npy) file holding many preprocessed samples stacked on axis 0.
    `preprocess` is required for images and must be absent for arrays, which are fed as they are.
    A model with several inputs reads each input's array by its name from the same files (one
    .npz per sample, or one .npz stacking each input), or takes it from its own source
    (`inputs.<name>`: images for one input, arrays for another).
    """

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(
        None,
        description="A folder of images (.jpg/.jpeg/.png) or of .npy/.npz files holding one "
        "preprocessed sample each, or a single .npz/.npy file with samples stacked on axis 0. "
        "Several inputs: .npz files keyed by input name. Relative paths are relative to the recipe "
        "file. Required unless every input has its own calibration.inputs.<name>.data.",
    )
    key: str | None = Field(
        None,
        description="Name of the array inside .npz files. Default: the only array in the file.",
    )
    samples: int = Field(
        100, ge=1, description="Number of calibration samples, picked deterministically (seeded)."
    )
    seed: int = Field(0, ge=0, description="Seed of the deterministic sample selection.")
    preprocess: Preprocess | None = Field(
        None,
        description="Image preprocessing (required for image data, not allowed for arrays, which "
        "must already be preprocessed).",
    )
    method: Literal[METHOD_NAMES] = Field("kl", description=methods_description())  # the registry's names
    percentile: float = Field(
        99.99, gt=0.0, le=100.0, description="Percentile of |x| used by method: percentile."
    )
    bins: int = Field(
        2048, ge=128, le=1 << 20,
        description="Histogram bins of |x| per tensor (kl compares 128 int8 levels against them).",
    )
    inputs: dict[str, InputCalibration] = Field(
        default_factory=dict,
        description="Per input of a multi-input model: its own data, array name and preprocessing "
        "(inputs not named here read their array, named after the input, from `data`).",
    )

    def source_for(self, name: str, several: bool) -> "CalibrationConfig":
        """The single-source config of input `name`: its data, array name and preprocessing.

        With `several` data inputs an input's array is named after it unless `inputs.<name>.key`
        says otherwise; a single input keeps `key` (default: the only array in the file).
        """
        own = self.inputs.get(name, InputCalibration())
        key = own.key or (name if several else self.key)
        preprocess = own.preprocess if own.data is not None else (own.preprocess or self.preprocess)
        return self.model_copy(update={"data": own.data or self.data, "key": key, "preprocess": preprocess,
                                       "inputs": {}})
