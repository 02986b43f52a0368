"""``python -m lrpfx.cli ...`` (and ``torchrun -m lrpfx.cli ...``): the same as the ``lrpfx`` command."""
import sys

from . import main

sys.exit(main())
