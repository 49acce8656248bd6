"""A GPT-2 style model written from scratch, wrapped as a transformers model.

This file is the whole model, top to bottom: configuration, attention, feed-forward, block,
the chapter's ``GPTModel`` and the sequence classifier that the Hub sees. It imports only torch
and transformers so that ``save_pretrained`` can copy it beside the weights as remote code and a
user without ``hf_spam`` installed can still load the model with ``trust_remote_code=True``.

Module and parameter names follow chapter 4/6 of *Build a Large Language Model (From Scratch)*
(``tok_emb``, ``pos_emb``, ``trf_blocks[i].att.W_query``, ``norm1.scale`` ...), so a state dict
saved by the chapter's notebook loads with ``strict=True`` (``hf_spam.chapter_checkpoint.load_chapter_classifier``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

# Size presets. The four GPT-2 sizes are the chapter's; ``tiny`` is for quick CPU runs and tests.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"emb_dim": 128, "n_layers": 2, "n_heads": 4},
    "gpt2-small": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
# The names OpenAI and the chapter's script use for the same sizes.
MODEL_SIZE_ALIASES: dict[str, str] = {
    "124M": "gpt2-small",
    "355M": "gpt2-medium",
    "774M": "gpt2-large",
    "1558M": "gpt2-xl",
    "gpt2": "gpt2-small",
    "gpt2-small (124M)": "gpt2-small",
    "gpt2-medium (355M)": "gpt2-medium",
    "gpt2-large (774M)": "gpt2-large",
    "gpt2-xl (1558M)": "gpt2-xl",
}
POOLING_CHOICES = ("last", "first", "last_non_pad", "mean")


def resolve_model_size(name: str) -> str:
    """Map a size name or alias (``124M``, ``gpt2-small`` ...) to a key of ``MODEL_PRESETS``."""
    key = MODEL_SIZE_ALIASES.get(name, name)
    if key not in MODEL_PRESETS:
        known = ", ".join(list(MODEL_PRESETS) + list(MODEL_SIZE_ALIASES))
        raise ValueError(f"model_size: unknown size {name!r}; expected one of {known}")
    return key


class GPTSpamConfig(PretrainedConfig):
    r"""Configuration of the chapter's GPT and its classification head.

    Args:
        vocab_size (`int`, defaults to 50257): GPT-2's BPE vocabulary size.
        context_length (`int`, defaults to 1024): number of position embeddings.
        emb_dim (`int`, defaults to 768): width of the residual stream.
        n_heads (`int`, defaults to 12): attention heads per block.
        n_layers (`int`, defaults to 12): transformer blocks.
        drop_rate (`float`, defaults to 0.0): dropout after embeddings, attention weights and
            each residual branch (the chapter fine-tunes with 0.0).
        qkv_bias (`bool`, defaults to `True`): bias in the query/key/value projections (GPT-2 has one).
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon, GPT-2's value.
        causal (`bool`, defaults to `True`): causal attention mask; `False` lets every token see the
            whole text (one of the chapter's bonus experiments).
        pooling (`str`, defaults to `"last"`): which token's output is classified: `last` (the last
            position, even when it is padding: the chapter), `first`, `last_non_pad` (the last real
            token, found from `attention_mask`) or `mean` (mean over real tokens).
        initializer_range (`float`, defaults to 0.02): std of the normal init of Linear/Embedding weights.
        num_labels / id2label / label2id: the classes, ham (0) and spam (1) by default.
        pad_token_id (`int`, defaults to 50256): GPT-2's `<|endoftext|>`, used as padding.
        padded_length (`int`, *optional*): the length training padded every text to (the chapter: the longest
            training text), or `None` (each batch padded to its longest text); only `trained_shape` acts on it.
        decision_log_odds / decision_threshold / decision_label (*optional*): set by training with a threshold (two
            labels): the log-odds `d` of class `decision_label` it decides at (and its probability `t`), folded into
            the head's bias (`b_pos -= d`), so argmax is that decision and the positive score crosses 0.5 exactly at
            `t`; records, nothing reads them.
        calibration_temperature (`float`, *optional*): set by `--calibrate temperature`: what the head's weights and
            bias were already divided by (before any threshold shift); a record, nothing reads it.
    """

    model_type = "hf_spam_gpt"
    # Standard names, so generic transformers code (Trainer, peft, pipelines) finds the sizes.
    attribute_map = {"hidden_size": "emb_dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "max_position_embeddings": "context_length"}

    def __init__(
        self,
        vocab_size: int = 50257,
        context_length: int = 1024,
        emb_dim: int = 768,
        n_heads: int = 12,
        n_layers: int = 12,
        drop_rate: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-5,
        causal: bool = True,
        pooling: str = "last",
        initializer_range: float = 0.02,
        pad_token_id: int | None = 50256,
        padded_length: int | None = None,
        **kwargs,
    ):
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling: unknown value {pooling!r}; expected one of {', '.join(POOLING_CHOICES)}")
        if emb_dim % n_heads != 0:
            raise ValueError(f"emb_dim ({emb_dim}) must be divisible by n_heads ({n_heads})")
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.emb_dim = emb_dim
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.drop_rate = drop_rate
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.causal = causal
        self.pooling = pooling
        self.initializer_range = initializer_range
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = {0: "ham", 1: "spam"}
            kwargs["label2id"] = {"ham": 0, "spam": 1}
        self.padded_length = padded_length
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def max_input_tokens(self) -> int:
        """Texts are cut to this many tokens: the padded length of training, else the context."""
        return min(self.padded_length or self.context_length, self.context_length)

    @property
    def fixed_length(self) -> int | None:
        """The length every input is padded to: with `last` pooling (which reads the last padded position) the
        padded length of training; otherwise `None`, since padding then changes nothing that is read."""
        return self.max_input_tokens if self.pooling == "last" and self.padded_length else None

    @property
    def training_length(self) -> int | None:  # for reports: the card, the server's /info
        return self.padded_length

    @classmethod
    def from_preset(cls, model_size: str, **kwargs) -> GPTSpamConfig:
        """Config for a named size (``tiny``, ``gpt2-small``/``124M`` ...)."""
        return cls(**{**MODEL_PRESETS[resolve_model_size(model_size)], **kwargs})


class LayerNorm(nn.Module):
    """LayerNorm with the chapter's parameter names (``scale``, ``shift``)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same maths as the chapter's hand-written version (biased variance), in one fused kernel.
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's GELU: the tanh approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP, 4x wide; ``layers[0]``/``layers[2]`` are the chapter's names."""

    def __init__(self, cfg: GPTSpamConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            GELU(),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (the chapter's layout).

    The chapter registers a ``[context, context]`` causal-mask buffer (persistent, so it sits in
    the chapter's state dicts); we let PyTorch's fused ``scaled_dot_product_attention`` apply
    causality instead, so no mask lands in our checkpoints. ``hf_spam.chapter_checkpoint.load_chapter_classifier``
    checks and drops the chapter's mask buffers.
    """

    def __init__(self, cfg: GPTSpamConfig):
        super().__init__()
        self.num_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.causal = cfg.causal
        self.dropout = cfg.drop_rate
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def heads(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """Project ``x [b, t, d]`` and split it into heads: ``[b, heads, t, head_dim]``."""
        return linear(x).view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.heads(self.W_query, x), self.heads(self.W_key, x), self.heads(self.W_value, x)
        dropout_p = self.dropout if self.training else 0.0
        # No mask given: the fused kernels apply the causal mask themselves (the fast path).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                           is_causal=self.causal and attn_mask is None)
        return self.out_proj(y.transpose(1, 2).reshape(x.shape))

    def attend_at(self, x: torch.Tensor, index: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """The attention output at one query position per row: ``x [b, t, d]``, ``index [b]`` -> ``[b, d]``.

        ``key_mask [b, t]`` (bool) says which keys that query sees. Keys and values are projected for
        every position, the query, the attention and ``out_proj`` only for the one position: the
        cheap way to run a classifier's last block when the pooling reads a single token.
        """
        query = x[torch.arange(x.shape[0], device=x.device), index][:, None, :]  # [b, 1, d]
        q, k, v = self.heads(self.W_query, query), self.heads(self.W_key, x), self.heads(self.W_value, x)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p)
        return self.out_proj(y.reshape(x.shape[0], x.shape[2]))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + att(norm1(x)), then x + ff(norm2(x))."""

    def __init__(self, cfg: GPTSpamConfig):
        super().__init__()
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps)
        self.norm2 = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps)
        self.drop_resid = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_resid(self.att(self.norm1(x), attn_mask))
        x = x + self.drop_resid(self.ff(self.norm2(x)))
        return x

    def forward_at(self, x: torch.Tensor, index: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """This block's output at one position per row (``[b, t, d]`` -> ``[b, d]``); equal to
        ``forward(x)[rows, index]`` when ``key_mask`` is the mask that position's query sees there."""
        rows = torch.arange(x.shape[0], device=x.device)
        y = x[rows, index] + self.drop_resid(self.att.attend_at(self.norm1(x), index, key_mask))
        return y + self.drop_resid(self.ff(self.norm2(y)))


def build_attention_mask(
    attention_mask: torch.Tensor | None, seq_len: int, causal: bool, dtype: torch.dtype
) -> torch.Tensor | None:
    """Turn a ``[batch, tokens]`` 1/0 padding mask into an additive SDPA mask, or ``None``.

    ``None`` means "causal only" (the fused fast path). A query row with no visible key (left
    padding under a causal mask) is allowed to see every key instead of producing NaNs; with the
    right padding used throughout this package that never happens.
    """
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(torch.bool)  # [b, 1, 1, t]
    if causal:
        tri = torch.ones(seq_len, seq_len, dtype=torch.bool, device=attention_mask.device).tril()
        keep = keep & tri  # [b, 1, t, t]
    else:
        keep = keep.expand(-1, 1, seq_len, -1)
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    additive = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return additive.masked_fill(~keep, torch.finfo(dtype).min)


class GPTModel(nn.Module):
    """The chapter's GPT: embeddings, ``n_layers`` blocks, final norm and an output head.

    ``out_dim`` is the head's width: the vocabulary for a language model (no bias, GPT-2's tied
    head), ``num_labels`` for the classifier (the chapter swaps ``out_head`` for a 2-way
    ``nn.Linear``, which has a bias: ``out_bias=True``). ``forward`` returns
    per-token logits like the chapter's model; ``embed``/``run_blocks``/``final_norm`` are exposed
    separately so callers can run a slice of the network (frozen-trunk feature caching).
    """

    def __init__(self, cfg: GPTSpamConfig, out_dim: int | None = None, out_bias: bool = False):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, out_dim or cfg.vocab_size, bias=out_bias)
        self.gradient_checkpointing = False  # set by transformers' gradient_checkpointing_enable()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (with embedding dropout)."""
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.context_length:
            raise ValueError(
                f"input_ids: {seq_len} tokens exceed the model's context length {self.cfg.context_length}"
            )
        pos = torch.arange(seq_len, device=input_ids.device)
        return self.drop_emb(self.tok_emb(input_ids) + self.pos_emb(pos))

    def run_blocks(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Run blocks ``start..end-1`` on hidden states ``x`` (recomputing each block's activations in the
        backward pass instead of keeping them, under gradient checkpointing)."""
        attn_mask = build_attention_mask(attention_mask, x.shape[1], self.cfg.causal, x.dtype)
        for block in self.trf_blocks[start:end]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block.__call__, x, attn_mask)
            else:
                x = block(x, attn_mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token logits ``[batch, tokens, out_dim]``; ``attention_mask`` hides padding keys."""
        return self.out_head(self.final_norm(self.run_blocks(self.embed(input_ids), attention_mask)))


def pooling_index(attention_mask: torch.Tensor | None, batch: int, seq_len: int, pooling: str,
                  device: torch.device | None = None) -> torch.Tensor | None:
    """The position ``[b]`` the classifier reads in each row, or ``None`` for ``mean`` (every real token).

    ``last_non_pad`` counts real tokens in ``attention_mask`` (padding sits on the right); it never
    searches for id 50256, which a message may contain as text.
    """
    if pooling == "first":
        return torch.zeros(batch, dtype=torch.long, device=device)
    if pooling == "last" or (pooling == "last_non_pad" and attention_mask is None):
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    if pooling == "last_non_pad":
        return attention_mask.long().sum(dim=1).clamp(min=1) - 1
    if pooling == "mean":
        return None
    raise ValueError(f"pooling: unknown value {pooling!r}; expected one of {', '.join(POOLING_CHOICES)}")


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """The token state(s) the classifier reads: ``[b, t, d] -> [b, d]``."""
    b, t, _ = hidden.shape
    index = pooling_index(attention_mask, b, t, pooling, hidden.device)
    if index is not None:
        return hidden[torch.arange(b, device=hidden.device), index]
    mask = (attention_mask if attention_mask is not None else hidden.new_ones(b, t)).to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class GPTSpamPreTrainedModel(PreTrainedModel):
    """Weight init and loading glue shared by the models below."""

    config_class = GPTSpamConfig
    base_model_prefix = "gpt"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only modules that transformers has not marked as loaded reach this method, so freshly
        # loaded weights are never re-randomised. Use torch.nn.init (no ``.data`` writes).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.scale)
            nn.init.zeros_(module.shift)


class GPTSpamForSequenceClassification(GPTSpamPreTrainedModel):
    """The chapter's GPT with a ``num_labels``-way ``out_head`` read at one (pooled) position."""

    # `forward` takes **kwargs (peft passes extras) but returns a per-batch mean loss: tell Trainer
    # not to treat it as normalised by `num_items_in_batch`. Otherwise Trainer skips the division by
    # gradient_accumulation_steps and multiplies the loss by the number of processes.
    accepts_loss_kwargs = False

    def __init__(self, config: GPTSpamConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.gpt = GPTModel(config, out_dim=config.num_labels, out_bias=True)
        # Training's per-class loss weights ([num_labels], set by the recipe's --class_weight), else None: a
        # non-persistent buffer, so it follows the model's device but is never saved or loaded.
        self.register_buffer("class_weights", None, persistent=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.gpt.tok_emb

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.gpt.tok_emb = value

    def trunk_attention_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The padding mask the blocks need, or ``None`` for the fused causal fast path.

        With right padding and a causal mask, real tokens never see padding, so the padding mask
        changes nothing that ``first``/``last_non_pad``/``mean`` read, and ``last`` reads a padding
        position exactly as the chapter computed it (no key mask). Only without the causal mask
        must padding keys be hidden.
        """
        return None if self.config.causal else attention_mask

    @property
    def active_pooling(self) -> str:
        """The pooling in force. ``last`` reads the last padded position; a model trained without a fixed length
        has no such position outside its training batches, so at inference it reads the last real token."""
        if self.config.pooling == "last" and self.config.fixed_length is None and not self.training:
            return "last_non_pad"
        return self.config.pooling

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final norm, pooling and head on block outputs: ``[b, t, d] -> [b, num_labels]``.

        Pooling before the head equals the chapter's ``out_head(...)[:, -1, :]`` because the head is
        linear per token, and skips computing logits for every other position.
        """
        return self.gpt.out_head(pool_hidden_states(self.gpt.final_norm(hidden), attention_mask, self.active_pooling))

    def trunk_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, end: int) -> torch.Tensor:
        """What ``forward`` computes before ``trf_blocks[end:]``: ``[b, t, d]`` block outputs, or for
        ``end == n_layers`` the pooled, final-normed ``[b, d]`` the head reads (the frozen-trunk cache stores these)."""
        input_ids, attention_mask = self.trained_shape(input_ids, attention_mask)
        hidden = self.gpt.run_blocks(self.gpt.embed(input_ids), self.trunk_attention_mask(attention_mask), 0, end)
        if end >= len(self.gpt.trf_blocks):
            return pool_hidden_states(self.gpt.final_norm(hidden), attention_mask, self.active_pooling)
        return hidden

    def logits_from_block(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, start: int
    ) -> torch.Tensor:
        """Logits from the output of ``trf_blocks[:start]`` (``[b, t, d]`` -> ``[b, num_labels]``).

        Equals ``classify(run_blocks(hidden, ..., start=start), attention_mask)``, but when the
        pooling reads one token the last block runs only at that token (its keys and values still
        cover the whole text): about a sixth of that block's work. Used to train and evaluate the
        trainable top of the model on cached outputs of a frozen trunk (``hf_spam.feature_cache``).
        """
        n = len(self.gpt.trf_blocks)
        b, t, _ = hidden.shape
        index = pooling_index(attention_mask, b, t, self.active_pooling, hidden.device)
        trunk_mask = self.trunk_attention_mask(attention_mask)
        if index is None or start >= n:
            return self.classify(self.gpt.run_blocks(hidden, trunk_mask, start), attention_mask)
        hidden = self.gpt.run_blocks(hidden, trunk_mask, start, n - 1)
        # The keys the pooled query sees in `forward`: causal -> every position up to it (padding
        # included, as the chapter's `last` pooling reads it); otherwise the real tokens.
        positions = torch.arange(t, device=hidden.device)
        if self.config.causal:
            key_mask = positions[None, :] <= index[:, None]
        elif attention_mask is not None:
            key_mask = attention_mask.to(torch.bool)
            key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
        else:
            key_mask = torch.ones(b, t, dtype=torch.bool, device=hidden.device)
        pooled = self.gpt.trf_blocks[n - 1].forward_at(hidden, index, key_mask)
        return self.gpt.out_head(self.gpt.final_norm(pooled))

    def trained_shape(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The inputs as training saw them, so that a model predicts the same however it is called (a pipeline
        with default arguments, a tokenizer padding to the batch's longest text, an ONNX graph): texts are cut to
        ``config.max_input_tokens``, like the chapter's ``classify_review``; with a ``config.fixed_length``
        (``last`` pooling) they are right-padded to it; an empty text is one ``<|endoftext|>`` token. Training
        batches pass unchanged; ``torch.export`` traces it with dynamic batch and sequence axes."""
        pad, length = self.config.pad_token_id, self.config.fixed_length
        if length is not None:  # a negative pad cuts: one op for texts shorter and longer than the length
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            extra = length - input_ids.shape[1]
            input_ids, attention_mask = F.pad(input_ids, (0, extra), value=pad), F.pad(mask, (0, extra), value=0)
        else:
            if input_ids.shape[1] == 0:  # nothing at all to read
                input_ids = input_ids.new_full((input_ids.shape[0], 1), pad)
                attention_mask = input_ids.new_zeros(input_ids.shape)
            input_ids = input_ids[:, : self.config.max_input_tokens]
            attention_mask = attention_mask[:, : input_ids.shape[1]] if attention_mask is not None else None
        if attention_mask is None:
            return input_ids, None
        empty = attention_mask[:, :1] == 0  # right padding: no real first token, no real token at all
        input_ids = torch.cat([torch.where(empty, pad, input_ids[:, :1]), input_ids[:, 1:]], dim=1)
        attention_mask = torch.cat([attention_mask[:, :1] | empty.to(attention_mask.dtype), attention_mask[:, 1:]], 1)
        return input_ids, attention_mask

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Mean cross-entropy in float32, weighted by ``class_weights`` when set: ``sum(w_y * nll) / sum(w_y)``."""
        if labels is None:
            return None
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        return F.cross_entropy(logits.float(), labels.to(logits.device).long(), weight=weight)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        # output_attentions/output_hidden_states/return_dict are accepted because peft's
        # sequence-classification wrapper passes them; this model always returns a ModelOutput.
        if inputs_embeds is not None:
            pos = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            x = self.gpt.drop_emb(inputs_embeds + self.gpt.pos_emb(pos))
        elif input_ids is not None:
            input_ids, attention_mask = self.trained_shape(input_ids, attention_mask)
            x = self.gpt.embed(input_ids)
        else:
            raise ValueError("forward: pass input_ids or inputs_embeds")
        logits = self.classify(self.gpt.run_blocks(x, self.trunk_attention_mask(attention_mask)), attention_mask)
        return SequenceClassifierOutput(loss=self.compute_loss(logits, labels), logits=logits)


# Saved folders carry this file and an ``auto_map``, so they load with ``trust_remote_code=True`` anywhere.
GPTSpamConfig.register_for_auto_class()
GPTSpamForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
