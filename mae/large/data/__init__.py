"""Images in: files and folders, data sets (parquet, arrow, tar shards), loaders, the fine-tuning recipe's augmentations."""

__all__ = ['augment', 'images', 'labelled', 'loader', 'mixup', 'rand_augment', 'records', 'sources', 'stream', 'tables',
           'tars']
