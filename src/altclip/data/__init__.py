"""Many files in many processes: WebDataset tar shards, data files (parallel text, image-text pairs), image
files decoded in worker processes.

Floor: imports processing and what lies below it.
"""
