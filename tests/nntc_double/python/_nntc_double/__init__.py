"""Shared code of the NNTC test double (see ../../README.md). Test-only: bmbuild must not import it."""

VERSION = "2.7.0-double"
