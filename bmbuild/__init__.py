"""bmbuild: declarative, incremental builds of Sophgo BM1684 bmodels from PyTorch models."""

__version__ = "0.1.0"
