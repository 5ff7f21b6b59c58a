"""Inputs -> tensors: images (CLIPImageProcessor), text (tokenizers), both (processors), prompt templates.

Floor: imports only errors, files and hub.
"""
