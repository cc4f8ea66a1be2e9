"""bmneto TEST DOUBLE (tests/nntc_double/README.md): bmnetp's double with an ONNX model."""
from _nntc_double import VERSION as __version__  # noqa: F401
