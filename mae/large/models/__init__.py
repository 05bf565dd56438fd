"""The models: the masked autoencoder, the ViT classifier, their blocks, masks, intermediates, decoder targets."""

__all__ = ['filters', 'intermediates', 'layers', 'mae', 'masks', 'pos_embed', 'target', 'vit']
