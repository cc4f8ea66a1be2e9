"""ufwio TEST DOUBLE (tests/nntc_double/README.md): the LMDB writer API of the SDK's ufwio, writing
the double's own `data.mdb` format (a magic line, then per record one JSON header line and the raw
C-order little-endian bytes). Needs numpy; the readers in _nntc_double.files do not."""
import atexit
import os

import numpy as np

from _nntc_double import VERSION as __version__
from _nntc_double import files


class LMDB_Dataset:
    """LMDB_Dataset(path, queuesize=100, mapsize=20e6): creates `path/` and overwrites
    `path/data.mdb` (the SDK doc: an existing LMDB there is overwritten) and `path/lock.mdb`."""

    def __init__(self, path, queuesize=100, mapsize=20e6):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self._queuesize = max(1, int(queuesize))
        self._queue, self._keys, self._next = [], set(), 0
        open(os.path.join(path, "lock.mdb"), "wb").close()
        self._f = open(os.path.join(path, "data.mdb"), "wb")
        self._f.write(files.LMDB_MAGIC)
        atexit.register(self.close)  # the SDK doc: close() runs at exit if not called

    def put(self, data, labels=None, keys=None):
        """One record per call: `data` stored with its original shape. Strict where the SDK doc
        allows more: lists of arrays (multi-input) are not modelled; dtypes outside the documented
        int8/uint8/int16/uint16/int32/uint32/float32 (float64 from np.random!) are refused;
        a repeated key (the doc: "overwrites or pollutes data") is refused."""
        if self._f is None:
            raise ValueError("LMDB_Dataset is closed")
        if not isinstance(data, np.ndarray):
            raise TypeError(f"ufwio double: put() takes one numpy.ndarray, got {type(data).__name__}")
        if data.dtype.name not in files.LMDB_DTYPES:
            raise TypeError(f"ufwio: dtype {data.dtype.name} not supported "
                            f"(use one of {', '.join(files.LMDB_DTYPES)})")
        if labels is not None and not isinstance(labels, (int, np.integer)):
            raise TypeError("ufwio: labels must be an int")
        if keys is None:
            keys = "%010d" % self._next
            self._next += 1
        key = keys.decode() if isinstance(keys, bytes) else str(keys)
        if key in self._keys:
            raise ValueError(f"ufwio double: duplicate LMDB key {key!r}")
        self._keys.add(key)
        arr = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        label = None if labels is None else int(labels)
        self._queue.append(files.lmdb_record_header(key, data.dtype.name, arr.shape, label) + arr.tobytes())
        if len(self._queue) >= self._queuesize:
            self._flush()

    def _flush(self):
        self._f.write(b"".join(self._queue))
        self._queue = []

    def close(self):
        if self._f is not None:
            self._flush()
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lmdb_data(path):
    """Yield (key, numpy array) for every record of `path/data.mdb`, in key order (as LMDB sorts)."""
    recs = list(files.read_lmdb_headers(path, "ufwio", with_payload=True))
    for rec in sorted(recs, key=lambda r: r["key"]):
        arr = np.frombuffer(rec["payload"], dtype=np.dtype(rec["dtype"]).newbyteorder("<"))
        yield rec["key"], arr.reshape(rec["shape"])
