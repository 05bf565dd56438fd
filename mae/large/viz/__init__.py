"""Figures: the demo's reconstruction panels, attention maps, patch-feature PCA, animations, the gallery."""

__all__ = ['animation', 'attention', 'encoder_figures', 'figures', 'gallery', 'panels', 'pca', 'training']
