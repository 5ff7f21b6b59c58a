"""AltCLIP's training recipe: ``altclip init`` (student), phase 1 (distillation), phase 2 (contrastive).

``phases`` builds what the ``loop`` (``Trainer``) runs; ``data`` samples and batches; ``losses`` and
``objectives`` hold the maths. Everything here sits on the models, the processors and ``altclip.runtime``.
"""
