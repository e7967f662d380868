"""Maintainer tools that build the small models shipped in `models/`."""
