"""Helpers with no model in them: devices and autocast, atomic writes, stop requests, NaN / Inf, keyed seeds, torchrun."""

__all__ = ['atomic', 'cancel', 'device', 'distributed', 'keyed', 'nonfinite', 'optim', 'outputs']
