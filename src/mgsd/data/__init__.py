"""Datasets: generation, I/O, importers and exporters."""
