"""Importers: other build systems' model zoos turned into bmbuild recipes (`bmbuild import ...`)."""
