"""Shared test helpers (not tests): test models, independent references, side environments for peer libraries
with clashing pins, the breadth zoo and the dataset job. The benchmarks import them too (``bench/``)."""
