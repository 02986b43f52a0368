"""Stage 2: what each node of the traced graph is. The op registry (one row per op), classification into kinds
with typed facts, and the analyses that run before and after rules are chosen (constants, dependencies,
BatchNorm folding, non-negativity, relevance support)."""
from .analyses import activation_nodes, hold_constant, unreached_inputs, untracked_dependency
from .classification import classify
from ..kinds import Kind, NodeInfo, OpSpec
from .nodes import op_label, parameter_of, source_line
from .registry import REGISTRY, register_op, unregister_op

__all__ = ["classify", "Kind", "NodeInfo", "OpSpec", "register_op", "unregister_op", "REGISTRY", "activation_nodes",
           "hold_constant", "unreached_inputs", "untracked_dependency", "op_label", "parameter_of", "source_line"]
