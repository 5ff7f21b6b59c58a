"""The networks, their parameter names those of the Hugging Face state dicts: configs, layers, the text and
image towers, the public models, weight files and int8 layers.

Floor: imports only errors, files and hub. Inside, config/outputs/weights/quantize come before layers, layers
before the towers (text, vision), the towers before models.
"""
