"""The chapter's plain PyTorch code: the baseline the benchmarks compare against, and the reference the
tests check our model against (the one copy of it in this repository).

A faithful re-implementation of *Build a Large Language Model (From Scratch)*'s chapter-4
``GPTModel`` (explicit masked softmax attention, hand-written LayerNorm and tanh GELU) and the
chapter-6 fine-tuning loop (``calc_loss_batch``, ``calc_accuracy_loader``, ``evaluate_model``,
``train_classifier_simple``) with its data handling: every text padded to the longest training
text (120 tokens) with ``<|endoftext|>``, batches of 8, the last position classified.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PAD_ID = 50256


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):  # noqa: ANN001
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):  # noqa: ANN001
        b, num_tokens, _ = x.shape
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1))
        context = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):  # noqa: ANN001
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):  # noqa: ANN001
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    def forward(self, x):  # noqa: ANN001
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    def __init__(self, cfg):  # noqa: ANN001
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), GELU(),
                                    nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))

    def forward(self, x):  # noqa: ANN001
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):  # noqa: ANN001
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                      cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):  # noqa: ANN001
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg):  # noqa: ANN001
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):  # noqa: ANN001
        _, seq_len = in_idx.shape
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.trf_blocks(self.drop_emb(x))
        return self.out_head(self.final_norm(x))


def chapter_config(model_size: str) -> dict:
    sizes = {"tiny": (128, 2, 4), "gpt2-small": (768, 12, 12)}
    emb, layers, heads = sizes[model_size]
    return {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True,
            "emb_dim": emb, "n_layers": layers, "n_heads": heads}


def chapter_classifier(model_size: str | dict, seed: int = 123) -> GPTModel:
    """The chapter's set-up: freeze everything, new 2-way head, train the last block and final norm.
    ``model_size``: a size name, or the chapter's config dict itself."""
    torch.manual_seed(seed)
    model = GPTModel(chapter_config(model_size) if isinstance(model_size, str) else model_size)
    for p in model.parameters():
        p.requires_grad = False
    torch.manual_seed(seed)
    model.out_head = nn.Linear(model.out_head.in_features, 2)
    for p in model.trf_blocks[-1].parameters():
        p.requires_grad = True
    for p in model.final_norm.parameters():
        p.requires_grad = True
    return model


def padded_batches(token_ids: list[list[int]], labels: list[int], length: int, batch_size: int = 8,
                   shuffle: bool = True, drop_last: bool = True, seed: int = 123):
    """The chapter's ``SpamDataset`` + ``DataLoader``: every text cut/padded to ``length``."""
    x = torch.full((len(token_ids), length), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(token_ids):
        ids = ids[:length]
        x[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    y = torch.as_tensor(labels, dtype=torch.long)
    dataset = torch.utils.data.TensorDataset(x, y)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                       generator=generator)


def calc_loss_batch(input_batch, target_batch, model, device):  # noqa: ANN001
    logits = model(input_batch.to(device))[:, -1, :]
    return torch.nn.functional.cross_entropy(logits, target_batch.to(device))


def calc_accuracy_loader(data_loader, model, device, num_batches=None):  # noqa: ANN001
    model.eval()
    correct, seen = 0, 0
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        with torch.no_grad():
            logits = model(input_batch.to(device))[:, -1, :]
        predicted = torch.argmax(logits, dim=-1)
        seen += predicted.shape[0]
        correct += (predicted == target_batch.to(device)).sum().item()
    return correct / max(seen, 1)


def calc_loss_loader(data_loader, model, device, num_batches=None):  # noqa: ANN001
    total = 0.0
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / max(num_batches, 1)


def evaluate_model(model, train_loader, val_loader, device, eval_iter):  # noqa: ANN001
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,  # noqa: ANN001
                            eval_freq, eval_iter):
    """The chapter's loop (losses and accuracies recorded as in the book)."""
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    global_step = -1
    for _ in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
        train_accs.append(calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter))
        val_accs.append(calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter))
    return train_losses, val_losses, train_accs, val_accs


def recipe_counts(n_train: int, n_val: int, n_test: int, epochs: int = 5, batch_size: int = 8,
                  eval_freq: int = 50, eval_iter: int = 5) -> dict[str, int]:
    """How many training steps and forward-only batches the chapter's whole recipe runs:
    evaluation every ``eval_freq`` steps on ``eval_iter`` train + val batches, accuracy on
    ``eval_iter`` train + val batches after each epoch, then accuracy on every batch of each split."""
    steps_per_epoch = n_train // batch_size  # drop_last=True
    steps = epochs * steps_per_epoch
    evaluations = len(range(0, steps, eval_freq))
    final = steps_per_epoch + math.ceil(n_val / batch_size) + math.ceil(n_test / batch_size)
    eval_batches = evaluations * 2 * eval_iter + epochs * 2 * eval_iter + final
    return {"train_steps": steps, "eval_batches": eval_batches, "evaluations": evaluations}
