"""Migration scripts, applied in order from an empty database."""
