"""mae-large: masked autoencoders (MAE) with the published ViT-Large checkpoints. The model is in `mae.large`."""

__version__ = "0.2.0"
