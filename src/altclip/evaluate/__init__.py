"""Evaluation: retrieval recall (R@1/5/10, MR) per language, zero-shot accuracy, reports."""
