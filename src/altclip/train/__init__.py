"""AltCLIP's training recipe: ``altclip init`` (student), phase 1 (distillation), phase 2 (contrastive).

``phases`` builds what the ``loop`` (``Trainer``) runs; ``data`` samples and batches; ``losses`` and
``objectives`` hold the maths.

Floor: imports the embedder's floor and what lies below it (models, processors, runtime, data), never search or
evaluate.
"""
