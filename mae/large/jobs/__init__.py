"""The library side of each command: a function a Python user calls for the same result as the command."""

__all__ = ['convert', 'download', 'encoder_view', 'inspect', 'onnx', 'reconstruct']
