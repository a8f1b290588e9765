"""Readers of the outside world: NVML, Kubernetes, prices and trace files.

Everything here turns some source into the trace-format records of
:mod:`collectors.records`; nothing here imports :mod:`agent` or :mod:`recommenders`.
"""
