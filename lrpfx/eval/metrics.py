"""The old single-module path of :mod:`lrpfx.eval`: the same names, re-exported from the modules that hold them
now (kept while lrpfx.cli imports from here; new code imports from :mod:`lrpfx.eval`)."""
from .comparison import EVALUATION_COLUMNS, EvaluationTable, evaluate_rules
from .conservation import ConservationReport, ConservationRow, conservation, conservation_report
from .perturbation import (ORDERS, PerturbationResult, auc, flipping_curve, patch_ids, perturbation_curve,
                           pixel_flipping, region_perturbation)
from .randomization import RandomizationResult, average_ranks, randomizable_layers, randomization_check, spearman

__all__ = ["flipping_curve", "pixel_flipping", "conservation", "ORDERS", "patch_ids", "perturbation_curve", "auc",
           "PerturbationResult", "region_perturbation", "average_ranks", "spearman", "randomizable_layers",
           "RandomizationResult", "randomization_check", "ConservationRow", "ConservationReport",
           "conservation_report", "EVALUATION_COLUMNS", "EvaluationTable", "evaluate_rules"]
