"""GPT-2 checkpoints (Hugging Face and OpenAI's TensorFlow format) into the chapter's GPTModel.

Real files only: tiny random checkpoints written by transformers' ``save_pretrained`` and by
TensorFlow's ``SaveV2`` (see ``gpt2_checkpoints.py``), real truncation, a real HTTP server.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from gpt2_checkpoints import hf_state_dict, write_hf_gpt2, write_openai_tf_gpt2
from safetensors.torch import load_file, save_file

from hf_spam.chapter_checkpoint import load_chapter_classifier
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.modeling_gpt import GPTModel, GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.openai_tf import download_openai_gpt2, load_openai_gpt2
from hf_spam.starting_model import build_model
from hf_spam.weights import load_gpt2, load_gpt2_state_dict, load_hf_gpt2

E, L, H, CTX = 64, 2, 4, 64


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gpt2")
    hf = write_hf_gpt2(base / "hf", n_embd=E, n_layer=L, n_head=H, n_positions=CTX, seed=1)
    tf = write_openai_tf_gpt2(base / "tf", hf)
    return {"hf": hf, "tf": tf, "base": base}


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_safetensors(folder: Path, edit) -> None:
    """Load the folder's model.safetensors, let ``edit`` change the dict, save it back."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------- both formats, same model


def test_both_formats_give_identical_chapter_state_dicts(ckpts):
    sizes_hf, sd_hf = load_gpt2_state_dict(ckpts["hf"])
    sizes_tf, sd_tf = load_gpt2_state_dict(ckpts["tf"])
    assert sizes_hf == sizes_tf == {
        "vocab_size": 50257, "context_length": CTX, "emb_dim": E, "n_heads": H, "n_layers": L,
        "layer_norm_eps": 1e-5, "qkv_bias": True,
    }
    # Exactly GPTModel's keys, in its order, and every tensor equal between the two formats.
    assert list(sd_hf) == list(GPTModel(GPTSpamConfig(**sizes_hf)).state_dict())
    assert list(sd_tf) == list(sd_hf)
    for key in sd_hf:
        assert torch.equal(sd_hf[key], sd_tf[key]), key


def test_mapping_matches_the_raw_files(ckpts):
    """Spot-check the Conv1D split/transposes against the files themselves (safetensors and TF's reader)."""
    import tensorflow as tf

    _, sd = load_hf_gpt2(ckpts["hf"])
    raw = load_file(str(ckpts["hf"] / "model.safetensors"))
    c_attn = raw["transformer.h.1.attn.c_attn.weight"]  # [E, 3E]: x @ W gives q | k | v
    assert torch.equal(sd["trf_blocks.1.att.W_key.weight"], c_attn[:, E:2 * E].T)
    assert torch.equal(sd["trf_blocks.1.att.W_value.bias"], raw["transformer.h.1.attn.c_attn.bias"][2 * E:])
    assert torch.equal(sd["trf_blocks.0.ff.layers.2.weight"], raw["transformer.h.0.mlp.c_proj.weight"].T)
    assert torch.equal(sd["trf_blocks.0.norm2.shift"], raw["transformer.h.0.ln_2.bias"])
    assert torch.equal(sd["final_norm.scale"], raw["transformer.ln_f.weight"])
    assert sd["out_head.weight"] is sd["tok_emb.weight"]

    w = torch.from_numpy(tf.train.load_variable(str(ckpts["tf"] / "model.ckpt"), "model/h1/attn/c_attn/w"))
    assert w.shape == (1, E, 3 * E)
    _, sd_tf = load_openai_gpt2(ckpts["tf"])
    assert torch.equal(sd_tf["trf_blocks.1.att.W_query.weight"], w[0, :, :E].T)
    for t in sd_tf.values():
        assert t.is_contiguous() and t.dtype == torch.float32


def test_load_gpt2_gives_tied_eval_language_model(ckpts):
    model = load_gpt2(ckpts["tf"])
    assert isinstance(model, GPTModel) and not model.training
    assert model.out_head.weight is model.tok_emb.weight
    with torch.no_grad():
        logits = model(torch.tensor([[6109, 3626, 6100, 345], [1, 2, 3, 4]]))
    assert logits.shape == (2, 4, 50257) and torch.isfinite(logits).all()


def test_hub_style_keys_buffers_and_lm_head(ckpts, tmp_path):
    """The Hub's files: no ``transformer.`` prefix, old attention buffers, sometimes ``lm_head.weight``."""
    folder = copy_dir(ckpts["hf"], tmp_path / "hub_style")

    def edit(t):
        for key in list(t):
            t[key.removeprefix("transformer.")] = t.pop(key)
        for i in range(L):
            t[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, CTX, CTX))
            t[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        t["lm_head.weight"] = t["wte.weight"].clone()

    rewrite_safetensors(folder, edit)
    _, expected = load_gpt2_state_dict(ckpts["hf"])
    _, got = load_gpt2_state_dict(folder)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # An untied head would be silently dropped by a tied model: refuse it, naming the tensor.
    rewrite_safetensors(folder, lambda t: t["lm_head.weight"].add_(1.0))
    with pytest.raises(HfSpamError, match=r"hub_style: tensor 'lm_head\.weight' differs from 'wte\.weight'"):
        load_gpt2_state_dict(folder)


def test_pytorch_model_bin_is_read_with_weights_only(ckpts, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(ckpts["hf"] / "config.json", folder)
    state = {f"transformer.{k}": v for k, v in hf_state_dict(ckpts["hf"]).items()}
    torch.save(state, folder / "pytorch_model.bin")
    _, expected = load_gpt2_state_dict(ckpts["hf"])
    _, got = load_gpt2_state_dict(folder)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # A pickle that would run code when fully unpickled: weights_only refuses it, nothing runs.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": Evil()}, f, protocol=2)
    with pytest.raises(HfSpamError, match=r"bin: refused to load pytorch_model\.bin"):
        load_gpt2_state_dict(folder)
    assert not marker.exists()


# ---------------------------------------------------------------------------- broken checkpoints


def test_truncated_safetensors_is_a_clear_error(ckpts, tmp_path):
    folder = copy_dir(ckpts["hf"], tmp_path / "cut")
    path = folder / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(HfSpamError, match=r"cut: unreadable weights file .*truncated or corrupt"):
        load_gpt2_state_dict(folder)


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes"])
def test_damaged_tf_data_file_is_a_clear_error(ckpts, tmp_path, damage):
    folder = copy_dir(ckpts["tf"], tmp_path / "cut_tf")
    data = folder / "model.ckpt.data-00000-of-00001"
    if damage == "truncate":
        os.truncate(data, data.stat().st_size // 2)
    else:  # same size, other bytes: caught by the checkpoint's per-tensor checksums
        raw = bytearray(data.read_bytes())
        for i in range(1000, len(raw), 4096):
            raw[i] ^= 0xFF
        data.write_bytes(bytes(raw))
    with pytest.raises(HfSpamError, match=r"model\.ckpt\.data-00000-of-00001: cannot read tensor 'model/") as info:
        load_gpt2_state_dict(folder)
    assert "\n" not in str(info.value)


def test_damaged_tf_index_is_a_clear_error(ckpts, tmp_path):
    folder = copy_dir(ckpts["tf"], tmp_path / "bad_index")
    (folder / "model.ckpt.index").write_bytes(b"not an sstable")
    with pytest.raises(HfSpamError, match=r"model\.ckpt\.index: unreadable TensorFlow checkpoint index"):
        load_gpt2_state_dict(folder)


def test_wrong_shape_is_named(ckpts, tmp_path):
    folder = copy_dir(ckpts["hf"], tmp_path / "shape")
    rewrite_safetensors(folder, lambda t: t.__setitem__("transformer.h.1.mlp.c_fc.bias", torch.zeros(4 * E - 1)))
    with pytest.raises(HfSpamError, match=r"shape: tensor 'transformer\.h\.1\.mlp\.c_fc\.bias' has shape \[255\], "
                       r"expected \[256\]"):
        load_gpt2_state_dict(folder)

    # OpenAI folder whose hparams.json disagrees with the tensors.
    tf_folder = copy_dir(ckpts["tf"], tmp_path / "shape_tf")
    hparams = json.loads((tf_folder / "hparams.json").read_text())
    (tf_folder / "hparams.json").write_text(json.dumps({**hparams, "n_ctx": 32}))
    with pytest.raises(HfSpamError, match=r"tensor 'model/wpe' has shape \[64, 64\], expected \[32, 64\]"):
        load_gpt2_state_dict(tf_folder)


def test_missing_and_unexpected_tensors_are_named(ckpts, tmp_path):
    folder = copy_dir(ckpts["hf"], tmp_path / "missing")
    rewrite_safetensors(folder, lambda t: t.pop("transformer.h.0.ln_2.weight"))
    with pytest.raises(HfSpamError, match=r"missing: missing tensor 'transformer\.h\.0\.ln_2\.weight'"):
        load_gpt2_state_dict(folder)

    folder = copy_dir(ckpts["hf"], tmp_path / "extra")
    rewrite_safetensors(folder, lambda t: t.__setitem__("transformer.h.2.ln_1.weight", torch.ones(E)))
    with pytest.raises(HfSpamError, match=r"unexpected tensor 'transformer\.h\.2\.ln_1\.weight' .*2 layers"):
        load_gpt2_state_dict(folder)

    state = hf_state_dict(ckpts["hf"])
    del state["h.1.attn.c_proj.bias"]
    tf_folder = write_openai_tf_gpt2(tmp_path / "missing_tf", state, n_head=H)
    with pytest.raises(HfSpamError, match=r"model\.ckpt\.index: missing tensor 'model/h1/attn/c_proj/b'"):
        load_gpt2_state_dict(tf_folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"n_head": None}, r"config\.json: n_heads must be a positive integer, got None"),
        ({"n_embd": "64"}, r"config\.json: emb_dim must be a positive integer, got '64'"),
        ({"activation_function": "relu"}, r"activation_function 'relu' is not GPT-2's"),
        ({"model_type": "llama"}, r"model_type 'llama' is not GPT-2"),
        ({"n_head": 5}, r"width 64 is not divisible by the 5 heads"),
        ({"n_inner": 100}, r"n_inner 100 differs from 4 \* n_embd"),
        ({"add_cross_attention": True}, r"only decoder-only GPT-2"),
    ],
)
def test_bad_config_json_is_named(ckpts, tmp_path, edit, message):
    folder = copy_dir(ckpts["hf"], tmp_path / "cfg")
    config = json.loads((folder / "config.json").read_text())
    config.update(edit)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(HfSpamError, match=message):
        load_gpt2_state_dict(folder)


def test_folder_that_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(HfSpamError, match=r"not a GPT-2 checkpoint folder: expected config\.json .*hparams\.json"):
        load_gpt2_state_dict(tmp_path)
    with pytest.raises(HfSpamError, match=r"notes\.txt: expected a checkpoint folder"):
        load_gpt2_state_dict(tmp_path / "notes.txt")
    hparams = {"n_vocab": 10, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 1}
    (tmp_path / "hparams.json").write_text(json.dumps(hparams))
    with pytest.raises(HfSpamError, match=r"no model\.ckpt\.index"):
        load_gpt2_state_dict(tmp_path)


def test_tf_checkpoint_without_tensorflow_says_what_to_install(ckpts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # what `import tensorflow` sees when it is absent
    with pytest.raises(UnavailableError, match=r'pip install "hf-spam\[tf\]"'):
        load_openai_gpt2(ckpts["tf"])
    with pytest.raises(UnavailableError, match="use a local copy instead"):
        load_gpt2_state_dict(ckpts["tf"])  # what --model_name_or_path TF_DIR does


@pytest.mark.parametrize("source", ["openai-community/gpt2", "gpt2", "124M", "gpt2-xl"])
def test_hub_id_offline_without_cache(tmp_path, source):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(UnavailableError) as info:
        load_gpt2_state_dict(source, cache_dir=tmp_path)
    text = str(info.value)
    assert text.startswith("openai-community/gpt2")
    assert "use a local copy instead: a folder with config.json" in text and "\n" not in text
    # through the recipe's model builder, the hint names the training flags
    with pytest.raises(UnavailableError, match=r"--model_name_or_path LOCAL_DIR.*--weights random"):
        build_model(checkpoint=source)


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does (``models--o--n/refs/main`` + ``snapshots/<commit>``)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    return snapshot


def test_hub_id_offline_from_the_hf_cache(ckpts, tmp_path):
    _, expected = load_gpt2_state_dict(ckpts["hf"])
    cache = tmp_path / "hub"
    snapshot = fake_hub_cache(cache, "openai-community/gpt2", {
        "config.json": ckpts["hf"] / "config.json", "model.safetensors": ckpts["hf"] / "model.safetensors",
    })
    sizes, got = load_gpt2_state_dict("124M", cache_dir=cache)
    assert sizes["emb_dim"] == E and all(torch.equal(got[k], expected[k]) for k in expected)

    # A repository with only pytorch_model.bin: the fallback file, read with weights_only.
    (snapshot / "model.safetensors").unlink()
    torch.save(load_file(str(ckpts["hf"] / "model.safetensors")), snapshot / "pytorch_model.bin")
    _, got = load_gpt2_state_dict("gpt2", cache_dir=cache)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # Neither weights file cached: unavailable, with the way out.
    (snapshot / "pytorch_model.bin").unlink()
    with pytest.raises(UnavailableError, match=r"^openai-community/gpt2: .*use a local copy instead"):
        load_gpt2_state_dict("openai-community/gpt2", cache_dir=cache)


# ---------------------------------------------------------------------------- OpenAI download


class _StaticServer:
    """Serve a folder over HTTP on 127.0.0.1, counting requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A local port number with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_openai_gpt2_uses_backup_and_cache(ckpts, tmp_path):
    site = tmp_path / "site" / "124M"
    shutil.copytree(ckpts["tf"], site)
    for name in ("encoder.json", "vocab.bpe", "model.ckpt.meta"):  # not read by the loader, but part of the set
        (site / name).write_text(name)
    server = _StaticServer(tmp_path / "site")
    # Nothing listens on the first URL's port: the backup must be used.
    bases = (f"http://127.0.0.1:{closed_port()}/{{size}}/", server.url + "{size}/")
    try:
        folder = download_openai_gpt2("124M", tmp_path / "cache", base_urls=bases, timeout=5, progress=False)
    finally:
        server.close()
    assert folder == tmp_path / "cache" / "gpt2-tf" / "124M"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in site.iterdir())
    assert len(server.requests) == 7
    _, got = load_gpt2_state_dict(folder)
    _, expected = load_gpt2_state_dict(ckpts["hf"])
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # Cached: no server at all now, still fine.
    assert download_openai_gpt2("124M", tmp_path / "cache", base_urls=bases[:1], progress=False) == folder
    # Not cached and unreachable: the user is told what to do instead.
    with pytest.raises(UnavailableError, match=r"could not download checkpoint .*use a local copy instead"):
        download_openai_gpt2("355M", tmp_path / "cache", base_urls=bases[:1], timeout=2, progress=False)
    assert not any((tmp_path / "cache" / "gpt2-tf" / "355M").iterdir())


# ---------------------------------------------------------------------------- cross-check script


def start_crosscheck(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(root / "scripts" / "crosscheck_weights.py"), *args],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_crosscheck_script_passes_then_names_the_changed_tensor(ckpts, root, tmp_path):
    state = hf_state_dict(ckpts["hf"])
    state["h.1.mlp.c_fc.bias"][7] += 1e-3
    changed = write_openai_tf_gpt2(tmp_path / "changed_tf", state, n_head=H)
    # Both runs at once: each spends most of its time importing torch and TensorFlow.
    good = start_crosscheck(root, "--hf_dir", str(ckpts["hf"]), "--tf_dir", str(ckpts["tf"]))
    bad = start_crosscheck(root, "--hf_dir", str(ckpts["hf"]), "--tf_dir", str(changed))

    code, out, err = finish(good)
    assert code == 0, err
    n_tensors = 2 + 16 * L + 3
    assert f"all {n_tensors} tensors and the logits match" in out
    assert "| trf_blocks.1.ff.layers.0.bias | h.1.mlp.c_fc.bias | model/h1/mlp/c_fc/b | 256 | 0 | yes |" in out
    assert "Every effort moves you" in out and "[6109, 3626, 6100, 345]" in out
    assert "max abs diff <= 1e-06 per parameter, <= 0.0001 on the logits" in out

    code, out, err = finish(bad)
    assert code == 1
    row = "| trf_blocks.1.ff.layers.0.bias | h.1.mlp.c_fc.bias | model/h1/mlp/c_fc/b | 256 | 0.001 | NO |"
    assert row in out
    assert f"1 of {n_tensors} tensors differ: trf_blocks.1.ff.layers.0.bias" in out
    assert err.strip().splitlines()[-1] == "error: the checkpoints differ: trf_blocks.1.ff.layers.0.bias"


def test_crosscheck_errors_are_one_line(ckpts, root, tmp_path):
    code, out, err = finish(start_crosscheck(root, "--hf_dir", str(ckpts["hf"]), "--tf_dir", str(tmp_path / "nowhere")))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "nowhere: no such folder" in err


# ---------------------------------------------------------------------------- the chapter's model file


def _tiny_classifier_config(**kw) -> GPTSpamConfig:
    return GPTSpamConfig(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2, **kw)


def test_chapter_state_dict_loads_predicts_and_round_trips(tmp_path):
    config = _tiny_classifier_config()
    torch.manual_seed(0)
    original = GPTSpamForSequenceClassification(config).eval()
    path = tmp_path / "review_classifier.pth"
    torch.save(original.gpt.state_dict(), path)  # the chapter's key names (tok_emb, trf_blocks ...)

    loaded = load_chapter_classifier(path, config)
    ids = torch.randint(0, 300, (4, 10))
    with torch.no_grad():
        expected = original(input_ids=ids).logits
        assert torch.equal(loaded(input_ids=ids).logits, expected)

    loaded.save_pretrained(tmp_path / "hf_model")
    again = GPTSpamForSequenceClassification.from_pretrained(tmp_path / "hf_model").eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, expected)
    for key, value in original.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_chapter_file_with_mask_buffers_and_inferred_config(tmp_path):
    """The chapter's own file also holds each block's causal-mask buffer; the sizes can be inferred."""
    config = GPTSpamConfig(vocab_size=100, context_length=12, emb_dim=768, n_heads=12, n_layers=1)
    torch.manual_seed(0)
    original = GPTSpamForSequenceClassification(config).eval()
    state = original.gpt.state_dict()
    state["trf_blocks.0.att.mask"] = torch.triu(torch.ones(12, 12), diagonal=1)
    path = tmp_path / "review_classifier.pth"
    torch.save(state, path)
    loaded = load_chapter_classifier(path)
    assert (loaded.config.emb_dim, loaded.config.n_heads, loaded.config.n_layers) == (768, 12, 1)
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, original(input_ids=ids).logits)

    state["trf_blocks.0.att.mask"] = torch.ones(12, 12)
    torch.save(state, path)
    with pytest.raises(HfSpamError, match=r"buffer 'trf_blocks\.0\.att\.mask' is not the chapter's causal mask"):
        load_chapter_classifier(path)


def test_chapter_file_with_wrong_sizes_is_named(tmp_path):
    torch.manual_seed(0)
    state = GPTSpamForSequenceClassification(_tiny_classifier_config()).gpt.state_dict()
    state.pop("trf_blocks.1.norm2.shift")
    path = tmp_path / "review_classifier.pth"
    torch.save(state, path)
    with pytest.raises(HfSpamError, match=r"review_classifier\.pth: missing tensor 'trf_blocks\.1\.norm2\.shift'"):
        load_chapter_classifier(path, _tiny_classifier_config())
    with pytest.raises(HfSpamError, match=r"num_labels=3"):
        load_chapter_classifier(path, _tiny_classifier_config(num_labels=3))
