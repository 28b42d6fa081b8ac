"""The pure canvas model and wire formats: no I/O here."""
