"""Text towers: RoBERTa positions, token types and input checks."""

from __future__ import annotations

import pytest
import torch

from altclip.modeling.config import AltCLIPTextConfig, CLIPTextConfig
from altclip.modeling.text import AltCLIPTextTransformer, CLIPTextTransformer, RobertaEmbeddings

CONFIG = AltCLIPTextConfig(
    vocab_size=50,
    hidden_size=16,
    intermediate_size=20,
    num_hidden_layers=1,
    num_attention_heads=2,
    project_dim=8,
    max_position_embeddings=12,
)
CLIP_CONFIG = CLIPTextConfig(
    vocab_size=30,
    hidden_size=8,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=6,
    eos_token_id=29,
    pad_token_id=29,
)


def test_positions_start_after_padding_and_skip_it():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1], [0, 5, 6, 7, 8, 2]])
    positions = RobertaEmbeddings(CONFIG).position_ids(ids)
    naive = [[(i + 2 if tok != 1 else 1) for i, tok in enumerate(row)] for row in ids.tolist()]
    assert positions.tolist() == naive


def test_default_token_types_are_zeros():
    tower = AltCLIPTextTransformer(CONFIG).eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    torch.testing.assert_close(tower(ids).pooler_output, tower(ids, token_type_ids=torch.zeros_like(ids)).pooler_output)


def test_bad_token_ids_are_named():
    tower = AltCLIPTextTransformer(CONFIG)
    with pytest.raises(ValueError, match=r"token ids in \[0, 50\] but the vocabulary has 50"):
        tower(torch.tensor([[0, 50, 2]]))
    with pytest.raises(ValueError, match="at most 10"):
        tower(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        tower(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        tower(torch.zeros(3, dtype=torch.long))
    clip = CLIPTextTransformer(CLIP_CONFIG)
    with pytest.raises(ValueError, match="at most 6"):
        clip(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary has 30"):
        clip(torch.tensor([[-1, 29]]))


def test_clip_pools_at_the_first_eos():
    tower = CLIPTextTransformer(CLIP_CONFIG).eval()  # pad_token_id == eos_token_id, as in OpenAI's CLIP
    ids = torch.tensor([[28, 5, 29, 29, 29], [28, 5, 6, 7, 29]])
    out = tower(ids, attention_mask=(torch.arange(5) < torch.tensor([[3], [5]])).long())
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[[0, 1], [2, 4]])
