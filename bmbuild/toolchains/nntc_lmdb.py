"""Write NNTC's calibration LMDB: `python -m bmbuild.toolchains.nntc_lmdb --calibration JSON ... OUT_DIR`.

The NNTC calibrate stage runs this as its first command, so that the SDK's `ufwio` is imported in
a child process of the SDK's Python only, and so that `<stage>.cmd` holds every step of the
calibration (a user can re-run them by hand in order). The samples are the ones the reference
toolchain calibrates on: the same seeded selection (calibration samples disjoint from the held-out
ones) and the same loading and preprocessing (`bmbuild.calib.dataset`). Each sample is one record
`[1, C, H, W]` float32 (`ufwio.LMDB_Dataset(path).put(ndarray)`, sophgo-toolchains.md), so the
fp32 umodel's data layer has batch 1 and `-iterations` equals the number of samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_lmdb(calibration_json: str, holdout: int, input_shape: list[int], out_dir: Path) -> int:
    """Write the calibration samples to `out_dir` (data.mdb); returns how many were written."""
    import numpy as np
    import ufwio  # the SophonSDK's LMDB writer: imported only here, in this child process

    from bmbuild.calib.config import CalibrationConfig
    from bmbuild.calib.dataset import SampleLoader, list_samples, split_samples

    cfg = CalibrationConfig.model_validate_json(calibration_json)
    refs, _ = split_samples(list_samples(cfg), cfg.samples, holdout, cfg.seed)
    loader = SampleLoader(cfg, tuple(input_shape[1:]))
    database = ufwio.LMDB_Dataset(str(out_dir))
    try:
        for ref in refs:
            database.put(np.ascontiguousarray(loader.load(ref)[np.newaxis], dtype=np.float32))
    finally:
        database.close()
    return len(refs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmbuild.toolchains.nntc_lmdb", description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", required=True, help="the recipe's calibration section as JSON")
    parser.add_argument("--holdout", type=int, default=0, help="samples held out for the int8 comparison")
    parser.add_argument("--input-shape", required=True, help="network input shape at batch 1, e.g. 1,3,224,224")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    from bmbuild.errors import BmbuildError

    shape = [int(d) for d in args.input_shape.split(",")]
    try:
        count = write_lmdb(args.calibration, args.holdout, shape, args.out_dir)
    except BmbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} calibration samples of shape {shape} float32 to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
