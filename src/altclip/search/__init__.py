"""Search over embedded collections: a collection folder in parts (embedding, resumable, across processes; a
folder's collection kept up to date), its FAISS index, and the near-duplicates found through it.

Floor: imports the embedder and what lies below it.
"""
