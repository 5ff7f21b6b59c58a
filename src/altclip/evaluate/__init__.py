"""Evaluation: retrieval recall (R@1/5/10, MR) per language, zero-shot accuracy, reports, and readers of the
public benchmarks' layouts (datasets).

Floor: imports the embedder and what lies below it.
"""
