"""Writing a file in one step: readers see the old file or the new one, never a part.

At the bottom of the layers (no bmbuild import), so the cache, the calibration table and the
no-op snapshot share one implementation; `tempfile` is imported when a file is written, not on
the no-op path that only reads.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` to `path` through a synced temp file in the same folder and `os.replace`; the file
    gets `mode` (mkstemp's own 0600 would hide it from other users)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
