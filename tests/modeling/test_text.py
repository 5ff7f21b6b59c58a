"""Text towers: RoBERTa positions, token types, input checks and the padding-free layout."""

from __future__ import annotations

import dataclasses

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


def _padding_free_pair() -> tuple[AltCLIPTextTransformer, AltCLIPTextTransformer]:
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, num_hidden_layers=2, hidden_dropout_prob=0.0)
    padded = AltCLIPTextTransformer(config)
    padded.init_weights()
    free = AltCLIPTextTransformer(config)
    free.load_state_dict(padded.state_dict())
    free.roberta.encoder.padding_free = True
    return padded, free


PADDED_IDS = torch.tensor([[0, 5, 6, 2, 1, 1, 1], [0, 7, 2, 1, 1, 1, 1], [0, 5, 6, 7, 8, 9, 2], [0, 2, 1, 1, 1, 1, 1]])
PADDED_MASK = PADDED_IDS.ne(1).long()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_padding_free_matches_the_padded_layers_and_their_gradients(checkpointing):
    padded, free = _padding_free_pair()
    free.roberta.encoder.gradient_checkpointing = checkpointing
    outputs = {}
    for name, tower in (("padded", padded), ("free", free)):
        tower.train()
        out = tower(PADDED_IDS, PADDED_MASK)
        (out.pooler_output.square().sum() + out.last_hidden_state[PADDED_MASK.bool()].sum()).backward()
        outputs[name] = out, {n: p.grad for n, p in tower.named_parameters() if p.grad is not None}
    (ours, our_grads), (theirs, their_grads) = outputs["free"], outputs["padded"]
    real = PADDED_MASK.bool()
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output)
    torch.testing.assert_close(ours.last_hidden_state[real], theirs.last_hidden_state[real])
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 10
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, msg=name)


def test_padding_free_skips_the_padded_rows():
    _, free = _padding_free_pair()
    rows = []
    free.roberta.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    free.eval()(PADDED_IDS, PADDED_MASK)
    assert rows == [torch.Size([int(PADDED_MASK.sum()), 16])]  # the real tokens, not 4 x 7
    rows.clear()
    full = torch.ones_like(PADDED_MASK)  # nothing padded: the usual (batch, length, hidden) layout
    free(PADDED_IDS.clamp(min=2), full)
    assert rows == [torch.Size([4, 7, 16])]
    rows.clear()
    free(PADDED_IDS, PADDED_MASK, output_attentions=True)  # weights come in the padded layout
    assert rows == [torch.Size([4, 7, 16])]
