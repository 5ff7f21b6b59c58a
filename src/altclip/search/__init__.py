"""Search over embedded collections: a collection folder in parts (embedding, resumable, across processes) and
its FAISS index.

Floor: imports the embedder and what lies below it.
"""
