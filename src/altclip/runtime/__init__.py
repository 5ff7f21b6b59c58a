"""A model on this machine: what the hardware computes fast, the device and precision, loading by family and
backend (torch, compile, ONNX Runtime), the ONNX export, torchrun groups and altclip doctor.

Floor: imports modeling, processing and what lies below them.
"""
