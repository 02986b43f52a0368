"""Concept Relevance Propagation: conditional relevance at any node, concept relevance, mining, atlas, graphs.

``Explainer(model, rule)(x, conditions=[{"y": 3, "features.28": [50]}, ...])`` runs the conditions as one
batched relevance pass (:func:`explain_conditions`); :func:`concept_relevance` gives every concept's relevance
and activation at chosen layers.
"""
from .conditions import Channels, Concept, Heads, MaskFunction, Selection, Units
from .relevance import ConceptRelevance, concept_relevance, explain_conditions
from .mining import ConceptMining, ConceptStats, load_mining, mine_concepts
from .atlas import Reference, atlas_rows, neurons, reference, render_atlas
from .graph import ConceptGraph, concept_graph

__all__ = ["Channels", "Concept", "Heads", "MaskFunction", "Selection", "Units", "ConceptRelevance",
           "concept_relevance", "explain_conditions", "ConceptMining", "ConceptStats", "load_mining", "mine_concepts",
           "Reference", "atlas_rows", "neurons", "reference", "render_atlas", "ConceptGraph", "concept_graph"]
