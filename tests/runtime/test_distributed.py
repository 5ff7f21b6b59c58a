"""One process needs no group; under torchrun each process gets its rank and device (see the 2-process tests in
tests/search/test_collection.py and tests/train/test_distributed.py)."""

from __future__ import annotations

import torch

from altclip.runtime import distributed


def test_one_process_joins_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = distributed.setup("cpu")
    assert (group.rank, group.world, group.device, group.main) == (0, 1, torch.device("cpu"), True)
    assert not torch.distributed.is_initialized()
    group.barrier()  # no group: nothing to wait for
    assert group.sum(2, torch.tensor(3.0)) == [2.0, 3.0]
    distributed.leave()
