"""Our GPTModel with GPT-2 weights computes what transformers' GPT-2 computes.

Two checkpoint shapes (different widths, layer and head counts), written by transformers itself:
logits with and without right padding, greedy generation against ``generate``, the classifier's
pooled hidden state and logits against ``GPT2ForSequenceClassification``, and the sanity-check CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from gpt2_checkpoints import write_hf_gpt2
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from hf_spam.cli import main as cli_main
from hf_spam.sanity import GENERATION_PROMPT, SPAM_PROMPT, generate_greedy, generate_text
from hf_spam.starting_model import build_model
from hf_spam.tokenization import PAD_TOKEN_ID, get_encoding
from hf_spam.weights import load_gpt2

ATOL = 1e-4
SHAPES = {
    "64w-2l-4h": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 80},
    "96w-3l-8h": {"n_embd": 96, "n_layer": 3, "n_head": 8, "n_positions": 80},
}
TEXTS = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "Ok lar... Joking wif u oni...",
]


@pytest.fixture(scope="module", params=list(SHAPES))
def ckpt(request, tmp_path_factory):
    folder = write_hf_gpt2(tmp_path_factory.mktemp(request.param), seed=3, **SHAPES[request.param])
    ours = load_gpt2(folder)
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    return folder, ours, theirs


@pytest.fixture(scope="module")
def enc():
    return get_encoding()


def padded_batch(enc) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [enc.encode_ordinary(t) for t in TEXTS]
    assert all(PAD_TOKEN_ID not in x for x in ids)  # HF finds the last real token by searching for the pad id
    n = max(map(len, ids))
    input_ids = torch.tensor([x + [PAD_TOKEN_ID] * (n - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])
    assert (mask == 0).any()
    return input_ids, mask


def test_logits_match_transformers_without_mask(ckpt):
    _, ours, theirs = ckpt
    ids = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert a.shape == b.shape == (3, 40, 50257)
    assert (a - b).abs().max().item() <= ATOL
    assert b.abs().max().item() > 1.0  # the comparison is not between near-zero numbers


def test_logits_match_transformers_with_right_padding(ckpt, enc):
    _, ours, theirs = ckpt
    ids, mask = padded_batch(enc)
    with torch.no_grad():
        a = ours(ids, mask)
        b = theirs(ids, attention_mask=mask).logits
        # Different filler in the padding must not change any real position.
        a_other = ours(ids.masked_fill(mask == 0, 13), mask)
    real = mask.bool()
    assert (a - b)[real].abs().max().item() <= ATOL
    assert torch.allclose(a[real], a_other[real], atol=1e-5)


def test_greedy_generation_matches_transformers_generate(ckpt, enc):
    _, ours, theirs = ckpt
    ids = torch.tensor([enc.encode_ordinary(GENERATION_PROMPT)])
    assert ids.tolist() == [[6109, 3626, 6100, 345]]
    mine = generate_greedy(ours, ids, max_new_tokens=15, context_size=ours.cfg.context_length)
    theirs.generation_config.eos_token_id = None  # never stop early: the chapter's loop does not
    with torch.no_grad():
        ref = theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=15,
                              pad_token_id=PAD_TOKEN_ID)
    assert mine.shape == (1, 19)
    assert mine.tolist() == ref.tolist()
    text = generate_text(ours, GENERATION_PROMPT, 15, enc)
    assert text == enc.decode(ref[0].tolist()) and text.startswith(GENERATION_PROMPT)


def test_generation_crops_to_context_size(ckpt):
    _, ours, theirs = ckpt
    ids = torch.tensor([[11, 22, 33, 44, 55, 66]])
    out = generate_greedy(ours, ids, max_new_tokens=4, context_size=3)
    expected = ids
    with torch.no_grad():
        for _ in range(4):
            nxt = theirs(expected[:, -3:]).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, nxt], dim=1)
    assert out.tolist() == expected.tolist()


def test_classifier_pooled_state_and_logits_match_gpt2_for_sequence_classification(ckpt, enc):
    folder, _, _ = ckpt
    ours = build_model(checkpoint=str(folder), pooling="last_non_pad").eval()
    theirs = GPT2ForSequenceClassification.from_pretrained(folder, num_labels=2, pad_token_id=PAD_TOKEN_ID).eval()
    ids, mask = padded_batch(enc)
    rows = torch.arange(ids.shape[0])
    last_real = mask.sum(dim=1) - 1
    # HF's own rule: the rightmost token that is not the pad id.
    hf_index = (torch.arange(ids.shape[1]) * (ids != PAD_TOKEN_ID)).argmax(-1)
    assert hf_index.tolist() == last_real.tolist()
    with torch.no_grad():
        gpt = ours.gpt
        pooled = gpt.final_norm(gpt.run_blocks(gpt.embed(ids)))[rows, last_real]
        hf_hidden = theirs.transformer(ids, attention_mask=mask).last_hidden_state[rows, hf_index]
        assert (pooled - hf_hidden).abs().max().item() <= ATOL

        # Same head weights on both sides: the class logits agree too.
        gpt.out_head.weight.copy_(theirs.score.weight)
        if gpt.out_head.bias is not None:
            gpt.out_head.bias.zero_()
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = theirs(input_ids=ids, attention_mask=mask).logits
    assert a.shape == b.shape == (3, 2)
    assert (a - b).abs().max().item() <= ATOL


def test_sanity_check_cli_on_local_weights(ckpt, enc, capsys):
    folder, _, theirs = ckpt
    cli_main(["sanity", "--model_name_or_path", str(folder)])
    out = capsys.readouterr().out
    theirs.generation_config.eos_token_id = None
    for prompt, n in ((GENERATION_PROMPT, 15), (SPAM_PROMPT, 23)):
        ids = torch.tensor([enc.encode_ordinary(prompt)])
        with torch.no_grad():
            ref = theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                  pad_token_id=PAD_TOKEN_ID)
        continuation = enc.decode(ref[0, ids.shape[1]:].tolist())
        assert f"Prompt: {prompt}\nContinuation: {continuation!r}" in out
    assert f"Model: {folder}" in out and "Same as the chapter" not in out  # only for the real 124M


def test_sanity_check_cli_offline_without_weights(root, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "sanity_check.py")],
        cwd=root, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode != 0
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: openai-community/gpt2: ") and "use a local copy instead" in line
    assert "--weights" not in line  # a hint names only what the command has
    assert proc.returncode == 3  # something could not be downloaded (not a bad input)
