"""The library side of each command: a function a Python user calls for the same result as the command."""

__all__ = ['attention', 'convert', 'download', 'encoder_view', 'features', 'forward', 'inspect', 'loss', 'models', 'onnx',
           'pca', 'reconstruct', 'run']
