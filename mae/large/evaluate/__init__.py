"""Evaluating an encoder: pooled features and their files, k-NN, the linear probe, classifier accuracy."""

__all__ = ['accuracy', 'features', 'knn', 'probe', 'probe_grid', 'source', 'store']
