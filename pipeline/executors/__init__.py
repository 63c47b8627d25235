"""Executors: where the independent units of the heavy loops run (see ``base``)."""
