"""The benchmark suite. Run its scripts as modules from the repository root (``python -m bench.report``): the
scripts import each other as ``bench.<name>`` and the test helpers as ``tests.helpers.<name>``."""
