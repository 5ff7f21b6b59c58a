"""Where in an image a text matched: relevance maps (relevance) and their pictures for people (drawing).

Floor: imports modeling, processing and what lies below them.
"""
