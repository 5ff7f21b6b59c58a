"""Text towers: AltCLIP's XLM-RoBERTa (bidirectional, post-LN) and CLIP's causal teacher.

Module names follow the Hugging Face state-dict keys (``roberta.encoder.layer.N.attention.self.query``,
``text_model.encoder.layers.N.self_attn.q_proj``), so checkpoints load by identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from altclip.errors import InputError
from altclip.modeling.config import AltCLIPTextConfig, CLIPTextConfig
from altclip.modeling.layers import (
    CLIPEncoder,
    EncoderOutput,
    Packing,
    activation,
    attention,
    causal_mask,
    init_layer_norms,
    init_normal,
    merge_heads,
    padding_mask,
    run_layers,
    split_heads,
)
from altclip.modeling.outputs import BaseModelOutputWithPooling


def check_token_ids(input_ids: Tensor, vocab_size: int, max_tokens: int) -> None:
    if input_ids.ndim != 2:
        raise InputError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point():
        raise InputError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.shape[1] > max_tokens:
        raise InputError(
            f"input_ids hold sequences of {input_ids.shape[1]} tokens but the position table allows at most "
            f"{max_tokens}; truncate them (tokenizer truncation=True, max_length={max_tokens})"
        )
    if torch.compiler.is_compiling():  # a value check cannot be traced; compiled and exported graphs skip it
        return
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise InputError(
            f"input_ids hold token ids in [{int(input_ids.min())}, {int(input_ids.max())}] but the vocabulary "
            f"has {vocab_size} entries (was the text tokenized with this model's tokenizer?)"
        )


# ---------------------------------------------------------------------------------------------------
# XLM-RoBERTa (AltCLIP's student)


class RobertaEmbeddings(nn.Module):
    """word + position + token type, then LayerNorm. Positions start at ``pad_token_id + 1`` and skip padding."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        c = config
        self.padding_idx = c.pad_token_id
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size, padding_idx=c.pad_token_id)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def position_ids(self, input_ids: Tensor) -> Tensor:
        real = input_ids.ne(self.padding_idx).int()
        return (torch.cumsum(real, dim=1) * real).long() + self.padding_idx

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        types = (
            self.token_type_embeddings.weight[0]
            if token_type_ids is None
            else self.token_type_embeddings(token_type_ids)
        )
        x = self.word_embeddings(input_ids) + types + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


Mask = Tensor | Packing | None  # additive (batch, 1, 1, keys), or the padding-free layout that carries one


class RobertaSelfAttention(nn.Module):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, mask: Mask, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """``x``: (batch, length, hidden), or (tokens, hidden) when ``mask`` is a ``Packing``."""
        packing = mask if isinstance(mask, Packing) else None
        q, k, v = (proj(x) for proj in (self.query, self.key, self.value))
        if packing is not None:
            mask = packing.mask
            q, k, v = packing.pad(q), packing.pad(k), packing.pad(v)  # (batch, length, hidden)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))
        out, weights = attention(q, k, v, mask, self.dropout if self.training else 0.0, need_weights)
        out = merge_heads(out)  # (batch, length, hidden)
        return (out if packing is None else packing.pack(out)), weights


class RobertaAddNorm(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))``: both the attention output and the feed-forward output."""

    def __init__(self, in_features: int, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class RobertaAttention(nn.Module):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.self = RobertaSelfAttention(config)
        self.output = RobertaAddNorm(config.hidden_size, config)

    def forward(self, x: Tensor, mask: Mask, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        attn, weights = self.self(x, mask, need_weights)
        return self.output(attn, x), weights


class RobertaIntermediate(nn.Module):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(x))


class RobertaLayer(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.attention = RobertaAttention(config)
        self.intermediate = RobertaIntermediate(config)
        self.output = RobertaAddNorm(config.intermediate_size, config)

    def forward(self, x: Tensor, mask: Mask, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        x, weights = self.attention(x, mask, need_weights)
        return self.output(self.intermediate(x), x), weights


class RobertaEncoder(nn.Module):
    """The stack of post-LN layers. ``padding_free`` (``PreTrainedModel.padding_free_enable``): a padded batch
    runs its linear maps on the real tokens alone (``Packing``); the real tokens' outputs are the same, and the
    padded positions of ``last_hidden_state`` hold zeros instead of values nothing should read."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(RobertaLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.padding_free = False

    def forward(
        self, x: Tensor, attention_mask: Tensor | None, output_hidden_states: bool, output_attentions: bool
    ) -> EncoderOutput:
        mask = padding_mask(attention_mask, x.dtype)
        wanted = not (output_hidden_states or output_attentions or torch.compiler.is_compiling())
        if self.padding_free and mask is not None and wanted:
            packing = Packing(attention_mask, mask)  # type: ignore[arg-type]  (a mask is only made from one)
            out = run_layers(self.layer, packing.pack(x), packing, False, False, self.gradient_checkpointing)
            return out._replace(last_hidden_state=packing.pad(out.last_hidden_state))
        return run_layers(self.layer, x, mask, output_hidden_states, output_attentions, self.gradient_checkpointing)


class RobertaModel(nn.Module):
    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = RobertaEncoder(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        check_token_ids(input_ids, self.config.vocab_size, self.config.max_tokens)
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (batch, length, hidden)
        return self.encoder(x, attention_mask, output_hidden_states, output_attentions)


class AltCLIPTextTransformer(nn.Module):
    """XLM-R -> ``pre_LN`` -> ``transformation``; token 0 (``<s>``) is the pooled output."""

    def __init__(self, config: AltCLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config)
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)
        self.pre_LN = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's scheme: every Linear and Embedding N(0, initializer_range)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                init_normal(module, self.config.initializer_range)
        init_layer_norms(self)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        out = self.roberta(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        projected = self.transformation(self.pre_LN(out.last_hidden_state))  # (batch, length, project_dim)
        return BaseModelOutputWithPooling(projected, projected[:, 0], out.hidden_states, out.attentions)


# ---------------------------------------------------------------------------------------------------
# CLIP (the teacher)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
        positions = (
            self.position_embedding.weight[: input_ids.shape[1]]
            if position_ids is None
            else self.position_embedding(position_ids)
        )
        return self.token_embedding(input_ids) + positions


class CLIPTextTransformer(nn.Module):
    """Causal pre-LN encoder; the pooled output is the ``final_layer_norm`` state at the first EOS token."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embeddings = CLIPTextEmbeddings(c)
        self.encoder = CLIPEncoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    @torch.no_grad()
    def init_weights(self) -> None:
        c = self.config
        init_normal(self.embeddings.token_embedding, 0.02 * c.initializer_factor)
        init_normal(self.embeddings.position_embedding, 0.02 * c.initializer_factor)
        self.encoder.init_weights(c.initializer_factor)
        init_layer_norms(self)

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        if self.config.eos_token_id == 2:
            # configs written before transformers PR #24773 carry eos_token_id=2: EOS is the largest id.
            return input_ids.int().argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        check_token_ids(input_ids, self.config.vocab_size, self.config.max_tokens)
        x = self.embeddings(input_ids, position_ids)  # (batch, length, hidden)
        mask = causal_mask(x.shape[1], attention_mask, x.dtype, x.device)
        out = self.encoder(x, mask, output_hidden_states, output_attentions)
        last = self.final_layer_norm(out.last_hidden_state)
        pooled = last[torch.arange(last.shape[0], device=last.device), self.eos_positions(input_ids)]
        return BaseModelOutputWithPooling(last, pooled, out.hidden_states, out.attentions)
