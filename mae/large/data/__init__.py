"""Images in: files and folders, datasets and loaders, the fine-tuning recipe's augmentations."""

__all__ = ['augment', 'images', 'labelled', 'loader', 'mixup', 'rand_augment']
