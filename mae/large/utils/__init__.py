"""Helpers with no model in them: devices, compiling, FLOPs, atomic writes, stop requests, NaN / Inf, keyed seeds, torchrun."""

__all__ = ['atomic', 'cancel', 'compile', 'device', 'distributed', 'flops', 'imagefile', 'jsontext', 'keyed', 'nonfinite',
           'optim', 'outputs']
