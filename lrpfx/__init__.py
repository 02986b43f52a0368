"""lrpfx: Layer-wise Relevance Propagation for PyTorch models, as an explicit relevance program."""
from . import composites, pipeline, rules
from .api import Explainer, Explanation, RelevanceProgram, explain, export
from .composites import Composite
from .graph.registry import register_op, unregister_op
from .kinds import Kind
from .pipeline import build_program, graph_of
from .rules import Rule
from .data import explain_dataset, load_explanations
from .functional import functional
from . import targets
from .bilrp import bilrp
from .parameters import parameter_relevance
from .units import unit_relevance
from .pruning import prune
from .guided import relevance_penalty, relevance_share
from .tune import tune
from .generation import GenerationExplainer, explain_generated, explain_generation
from .patterns import Patterns, fit_patterns
from .patches import patch_heatmaps, unpatchify
from .errors import (InputError, LrpfxError, OutputError, RuleError, TargetError, TraceError,
                     UnsupportedOpError)

from .version import __version__

__all__ = ["explain", "Explainer", "export", "Explanation", "RelevanceProgram", "Composite", "composites", "rules", "fit_patterns", "Patterns",
           "LrpfxError", "TraceError", "UnsupportedOpError", "RuleError", "TargetError", "InputError",
           "OutputError", "explain_dataset", "load_explanations", "explain_generation", "explain_generated",
           "GenerationExplainer", "register_op", "unregister_op", "Kind", "Rule", "pipeline", "build_program",
           "graph_of", "functional", "targets", "bilrp", "parameter_relevance", "unit_relevance", "prune",
           "relevance_penalty", "relevance_share", "tune", "patch_heatmaps", "unpatchify", "__version__"]
