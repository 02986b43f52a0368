"""The keys lrpfx writes into ``fx.Node.meta`` (and the one attribute it reads from users' modules), named once.

Facts about a node travel with the node through the stages (front-end, graph, program) under these keys; every
module reads and writes them through these names.
"""

VALUE = "lrpfx_value"  # a ValueInfo: shape, dtype, tuple structure of the node's recorded value
MODULE = "lrpfx_module"  # export front-end: the qualified name of the module an op belongs to
MODULE_OBJECT = "lrpfx_module_object"  # export front-end: that module (a parametrised op's module)
WHOLE_MODULE = "lrpfx_whole_module"  # a call of a module kept whole (a leaf), recorded by running it
SDPA = "lrpfx_sdpa"  # the A·V node of an attention split out of scaled_dot_product_attention
HELD = "lrpfx_held"  # the composite's ``constants`` glob that holds this node's value constant
DECOMPOSED = "lrpfx_decomposed"  # a Core ATen piece: the name of the op it was decomposed from
# in ``GraphModule.meta``: the path under which the user's model sits in ``nn_module_stack`` (export's wrapper)
MODULE_ROOT = "lrpfx_module_root"

# a user's module class may say ``lrpfx_zero_at_zero = False`` (its output is not 0 at input 0)
ZERO_AT_ZERO_ATTRIBUTE = "lrpfx_zero_at_zero"
