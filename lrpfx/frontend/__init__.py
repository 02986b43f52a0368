"""Stage 1: a recorded graph of the model — torch.fx (fx.py) or torch.export (export.py), normalised into one
form (normalise.py); every node's value recorded (``meta[lrpfx.meta_keys.VALUE]``)."""
