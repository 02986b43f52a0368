"""Pictures of relevance: image heatmaps and overlays (image.py), token heatmaps (tokens.py), generated text
(generation.py)."""
