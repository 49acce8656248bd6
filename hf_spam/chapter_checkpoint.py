"""The chapter notebook's own model file, a plain PyTorch state dict, as this package's classifier."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import HfSpamError, one_line
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification

# GPT-2's width -> heads (the head count is not visible in the weights).
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}


def load_chapter_classifier(path: str | os.PathLike,
                            config: GPTSpamConfig | None = None) -> GPTSpamForSequenceClassification:
    """The chapter's fine-tuned ``review_classifier.pth`` as a ``GPTSpamForSequenceClassification``.

    Read with ``torch.load(weights_only=True)`` and loaded strictly in the chapter's names. The chapter
    registers each block's causal mask as a persistent buffer (``trf_blocks.i.att.mask``): those are
    checked to be the causal mask, then dropped (this model applies causality itself). Without ``config``
    the sizes are inferred from the tensors (the head count from GPT-2's standard widths).
    """
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HfSpamError(f"{path}: no such file (expected the chapter's review_classifier.pth)") from None
    except Exception as err:  # pickle, zip or EOF errors of a foreign, truncated or malicious file
        raise HfSpamError(f"{path}: not a state dict readable with torch.load(weights_only=True) "
                          f"({one_line(err)[:200]})") from None
    if not isinstance(sd, dict):
        raise HfSpamError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    sd = {k.removeprefix("gpt."): v for k, v in sd.items()}  # a whole classifier object's state, or its GPT's
    for key in [k for k in sd if k.endswith(".att.mask")]:
        mask = sd.pop(key)
        n = mask.shape[-1]
        if mask.dim() != 2 or not torch.equal(mask.bool(), torch.ones(n, n, dtype=torch.bool).triu(1)):
            raise HfSpamError(f"{path}: buffer {key!r} is not the chapter's causal mask")
    if config is None:
        try:
            (vocab, emb), ctx, labels = sd["tok_emb.weight"].shape, sd["pos_emb.weight"].shape[0], \
                sd["out_head.weight"].shape[0]
        except (KeyError, ValueError) as err:
            raise HfSpamError(f"{path}: not a chapter GPT state dict (no usable {err})") from None
        if emb not in _HEADS_BY_WIDTH:
            raise HfSpamError(f"{path}: width {emb} is not a GPT-2 size; pass a GPTSpamConfig with its n_heads")
        layers = len({k.split(".")[1] for k in sd if k.startswith("trf_blocks.")})
        config = GPTSpamConfig(vocab_size=vocab, context_length=ctx, emb_dim=emb, n_heads=_HEADS_BY_WIDTH[emb],
                               n_layers=layers, qkv_bias="trf_blocks.0.att.W_query.bias" in sd, num_labels=labels)
    model = GPTSpamForSequenceClassification(config)
    expected = model.gpt.state_dict()
    for key in [*expected, *sd]:
        if key not in sd or key not in expected:
            raise HfSpamError(f"{path}: {'missing' if key not in sd else 'unexpected'} tensor {key!r} "
                              f"(emb_dim={config.emb_dim}, n_layers={config.n_layers}, num_labels={config.num_labels})")
        if sd[key].shape != expected[key].shape:
            raise HfSpamError(f"{path}: tensor {key!r} has shape {list(sd[key].shape)}, expected "
                              f"{list(expected[key].shape)} (num_labels={config.num_labels})")
    model.gpt.load_state_dict(sd, strict=True)
    return model.eval()
