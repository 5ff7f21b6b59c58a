"""The AltCLIP recipe in miniature, offline, on emoji named in 14 languages (altclip demo).

Floor: imports train, evaluate, the embedder and what lies below them.
"""
