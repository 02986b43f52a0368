"""lrpfx's test suite. A package so that its helpers import as ``tests.helpers.<name>`` from the repository root
(pytest's ``pythonpath = ["."]``, or ``python -m bench.<script>`` from the root) without editing ``sys.path``."""
