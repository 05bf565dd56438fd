"""Helpers with no model in them: devices, atomic writes, stop requests, NaN / Inf, keyed seeds, torchrun, outside files."""

__all__ = ['atomic', 'cancel', 'device', 'distributed', 'imagefile', 'jsontext', 'keyed', 'nonfinite', 'optim', 'outputs']
