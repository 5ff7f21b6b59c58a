"""One process needs no group; under torchrun each process gets its rank and device (see the 2-process tests in
tests/tasks/test_collection.py and tests/train/test_distributed.py)."""

from __future__ import annotations

import torch

from altclip import distributed


def test_one_process_joins_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cpu") == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    distributed.barrier()  # no group: nothing to wait for
    distributed.leave()
