"""Toolchains: one module each, behind the protocol and registry in `bmbuild.toolchains.base`."""
