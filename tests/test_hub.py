"""Hub-ready folders: files, model card, no secrets/paths, tokenizer parity, remote-code loading, push errors."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import scaled_tiny_model

from hf_spam import GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.arguments import DataArguments, ModelArguments, SpamTrainingArguments
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.hub import check_model_folder, push_folder_to_hub, save_model_folder
from hf_spam.model_card import run_summary
from hf_spam.tokenization import END_OF_TEXT, build_hf_tokenizer, encode_texts, get_encoding

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"
METRICS = {
    "train_accuracy": 0.97, "train_f1": 0.965, "train_precision": 0.96, "train_recall": 0.97, "train_examples": 1045,
    "validation_accuracy": 0.96, "validation_f1": 0.95, "validation_examples": 149,
    "test_accuracy": 0.9567, "test_f1": 0.955, "test_precision": 0.97, "test_recall": 0.94, "test_examples": 300,
    "total_parameters": 7_000_000, "device": "cpu",
}
TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121",
    "Ok lar... Joking wif u oni...",
    "a message with <|endoftext|> inside it",
    "  spaces   and\ttabs\nand a new line ",
]
EXPECTED_FILES = {
    "config.json", "model.safetensors", "modeling_gpt.py", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "README.md", "training_args.json", "metrics.json",
}


tiny_model = scaled_tiny_model


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, sms_file: Path, bpe_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("hub")
    folder = root / "gpt-spam-run"
    # What a training run leaves beside the model: must be kept.
    (folder / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"not uploaded")
    (folder / "loss-plot.pdf").write_bytes(b"%PDF-1.4 plot")
    model = tiny_model(pooling="last_non_pad")
    # A run whose arguments hold a token and local paths: only the allow-listed summary is kept.
    args = SpamTrainingArguments(output_dir=str(folder), hub_token=FAKE_TOKEN, hub_model_id="someone/x",
                                 learning_rate=5e-5, num_train_epochs=5, report_to="none")
    model_args = ModelArguments(model_size="tiny", weights="random", bpe_dir=str(bpe_dir))
    data_args = DataArguments(data_file=str(sms_file), data_cache_dir=str(root))
    settings = run_summary({**vars(args), **vars(model_args), **vars(data_args)}, {"source": "sms"})
    info = {"base_model": None, "weights": "pretrained", "model_size": "tiny",
            "data": {"source": "sms", "recipe": "balanced (747 ham + 747 spam), 70/10/20",
                     "splits": {"train": 1045, "validation": 149, "test": 300}}}
    out = save_model_folder(model, folder, metrics=METRICS, settings=settings, info=info, bpe_dir=bpe_dir)
    return {"root": root, "folder": out, "model": model, "bpe_dir": bpe_dir, "sms_file": sms_file}


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


def test_folder_has_the_hub_files_and_keeps_other_files(saved: dict) -> None:
    folder: Path = saved["folder"]
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert EXPECTED_FILES <= names
    assert (folder / "checkpoint-10" / "optimizer.pt").read_bytes() == b"not uploaded"
    assert (folder / "loss-plot.pdf").is_file()
    assert not list(folder.glob(".*stage*")), "the staging folder must be removed"
    assert check_model_folder(folder) == folder

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "modeling_gpt.GPTSpamConfig",
        "AutoModelForSequenceClassification": "modeling_gpt.GPTSpamForSequenceClassification",
    }
    assert "_name_or_path" not in config
    assert config["model_type"] == "hf_spam_gpt" and config["pad_token_id"] == 50256
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["pad_token"] == END_OF_TEXT and tok_config["padding_side"] == "right"
    assert tok_config["split_special_tokens"] is True
    # Registered once, when the model's module is imported: every save carries the remote code.
    assert GPTSpamForSequenceClassification._auto_class == "AutoModelForSequenceClassification"
    assert GPTSpamConfig._auto_class == "AutoConfig"


def test_no_secrets_and_no_local_paths_anywhere(saved: dict) -> None:
    folder: Path = saved["folder"]
    forbidden = [FAKE_TOKEN, str(saved["root"]), str(saved["sms_file"].parent), str(saved["bpe_dir"]), os.getcwd()]
    for path in folder.iterdir():
        if path.is_file() and path.name not in ("loss-plot.pdf",):
            data = path.read_bytes()
            for text in forbidden:
                assert text.encode() not in data, f"{path.name} contains {text!r}"
    args = json.loads((folder / "training_args.json").read_text())
    assert not {"hub_token", "output_dir", "data_file", "bpe_dir", "data_cache_dir", "hub_model_id"} & set(args)
    assert args["learning_rate"] == 5e-5 and args["num_train_epochs"] == 5 and args["model_size"] == "tiny"
    assert "lora_rank" not in args  # LoRA settings only for LoRA runs
    assert json.loads((folder / "metrics.json").read_text()) == METRICS


def test_model_card_front_matter_and_body(saved: dict) -> None:
    readme = (saved["folder"] / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-classification"
    assert "datasets" not in meta and "spam-detection" in meta["tags"]  # the data came from UCI, not the Hub
    assert [w["text"][:15] for w in meta["widget"]] == ["Congratulations", "Running late, s"]
    assert "base_model" not in meta  # the card said: not from a Hub checkpoint
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert result["task"]["type"] == "text-classification" and result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": 0.9567, "f1": 0.955, "precision": 0.97, "recall": 0.94}
    body = readme.split("---\n", 2)[2]
    assert 'pipeline("text-classification"' in body and "trust_remote_code=True" in body
    assert "| test | 95.67% | 95.50% | 97.00% | 94.00% | 300 |" in body
    assert "| validation | 149 |" in body and "## Limitations" in body and "## License" in body
    assert "`learning_rate` | 5e-05" in body


def test_card_base_model_only_for_hub_ids(tmp_path: Path, bpe_dir: Path) -> None:
    model = tiny_model(pooling="last", padded_length=120)
    hub = save_model_folder(model, tmp_path / "a", metrics=METRICS, info={"base_model": "openai-community/gpt2"},
                            bpe_dir=bpe_dir)
    meta = front_matter((hub / "README.md").read_text())
    assert meta["base_model"] == "openai-community/gpt2"
    readme = (hub / "README.md").read_text()
    # `last` pooling on a padded length: the model pads itself, the usage snippet needs no padding arguments.
    assert "the model pads\n(and cuts) its inputs to that length itself" in readme and "max_length=" not in readme
    local = save_model_folder(model, tmp_path / "b", info={"base_model": str(tmp_path / "a")}, bpe_dir=bpe_dir)
    readme = (local / "README.md").read_text()
    assert "base_model" not in front_matter(readme) and str(tmp_path) not in readme
    assert "model-index" not in front_matter(readme)  # no metrics given: no results claimed


def test_resave_replaces_weights_and_removes_stale_shards(tmp_path: Path, bpe_dir: Path) -> None:
    folder = tmp_path / "run"
    save_model_folder(tiny_model(seed=1), folder, bpe_dir=bpe_dir)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"stale shard of an older save")
    (folder / "notes.txt").write_text("mine")
    second = tiny_model(seed=2)
    save_model_folder(second, folder, bpe_dir=bpe_dir)
    assert not (folder / "model-00001-of-00002.safetensors").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    loaded = GPTSpamForSequenceClassification.from_pretrained(folder)
    for (name, a), (_, b) in zip(second.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def test_hub_tokenizer_gives_tiktoken_ids_on_every_message(saved: dict) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved["folder"])
    frame = pd.read_csv(saved["sms_file"], sep="\t", header=None, names=["Label", "Text"])
    texts = frame["Text"].tolist() + [
        "<|endoftext|>", "spam <|endoftext|><|endoftext|> ham", "", "trailing spaces   ", "émoji 😀 ünïcode",
    ]
    assert len(texts) == 5572 + 5
    expected = encode_texts(texts, get_encoding(saved["bpe_dir"]))
    assert tokenizer(texts)["input_ids"] == expected
    assert expected[-5] == [27, 91, 437, 1659, 5239, 91, 29]  # the text, not the special token 50256
    assert tokenizer.pad_token_id == 50256 and tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 1024
    batch = tokenizer(["a b c", "a"], padding=True)
    assert batch["input_ids"][1][1:] == [50256, 50256] and batch["attention_mask"][1] == [1, 0, 0]
    assert build_hf_tokenizer(saved["bpe_dir"])(texts[:50])["input_ids"] == expected[:50]


# --------------------------------------------------------------------------------------------
# Loading without hf_spam (what a Hub user does)
# --------------------------------------------------------------------------------------------

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoModelForSequenceClassification, pipeline

    folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for key, (folder, call_kwargs) in folders.items():
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
        clf = pipeline("text-classification", model=folder, trust_remote_code=True, device="cpu")
        scores = [{d["label"]: d["score"] for d in result} for result in clf(texts, top_k=None, **call_kwargs)]
        out[key] = {"class": type(model).__module__ + "." + type(model).__name__,
                    "labels": model.config.id2label, "scores": scores}
    out["hf_spam_imported"] = any(name == "hf_spam" or name.startswith("hf_spam.") for name in sys.modules)
    print(json.dumps(out))
    """
)


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def test_folder_loads_with_auto_classes_and_pipeline_without_hf_spam(saved: dict, tmp_path: Path) -> None:
    from hf_spam.predict import SpamClassifier

    padded = save_model_folder(tiny_model(seed=3, pooling="last", padded_length=48), tmp_path / "padded-run",
                               bpe_dir=saved["bpe_dir"])
    folders = {
        "last_non_pad": [str(saved["folder"]), {}],
        # The card's usage for `last` pooling: pad like training did.
        "last_padded": [str(padded), {"padding": "max_length", "truncation": True, "max_length": 48}],
    }
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, json.dumps(folders), json.dumps(TEXTS)],
        cwd=work, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hf_spam_imported"] is False

    enc = get_encoding(saved["bpe_dir"])
    model = saved["model"]
    for key in folders:
        assert out[key]["class"].startswith("transformers_modules.") and out[key]["class"].endswith(
            "modeling_gpt.GPTSpamForSequenceClassification"
        )
        assert out[key]["labels"] == {"0": "ham", "1": "spam"}
        assert all(set(s) == {"ham", "spam"} for s in out[key]["scores"])
    # In-process reference for the `last_non_pad` model: softmax of our model on tiktoken ids.
    for text, scores in zip(TEXTS, out["last_non_pad"]["scores"]):
        with torch.inference_mode():
            probs = model(input_ids=torch.tensor([enc.encode_ordinary(text)])).logits.softmax(-1)[0]
        assert scores["spam"] == pytest.approx(probs[1].item(), abs=1e-5)
        assert scores["ham"] == pytest.approx(probs[0].item(), abs=1e-5)
    # ... and for the padded `last` model: our SpamClassifier (pads to the trained length).
    ours = SpamClassifier.from_pretrained(padded, device="cpu").predict(TEXTS)
    spread = [r["spam_probability"] for r in ours]
    assert max(spread) - min(spread) > 1e-3, "the test texts should get different scores"
    for record, scores in zip(ours, out["last_padded"]["scores"]):
        assert scores["spam"] == pytest.approx(record["spam_probability"], abs=1e-5)


# --------------------------------------------------------------------------------------------
# Pushing (no Hub here: every error path)
# --------------------------------------------------------------------------------------------


def test_push_rejects_bad_repo_ids(saved: dict) -> None:
    for repo_id in ("bad repo id", "owner/na me", "-startswithdash/x", "a/b/c", ""):
        with pytest.raises(HfSpamError, match="repo_id"):
            push_folder_to_hub(saved["folder"], repo_id, token=FAKE_TOKEN)


def test_push_offline_is_one_line_without_token(saved: dict) -> None:
    with pytest.raises(UnavailableError) as info:
        push_folder_to_hub(saved["folder"], "someone/gpt-spam", token=FAKE_TOKEN)
    message = str(info.value)
    assert "offline" in message and "someone/gpt-spam" in message
    assert FAKE_TOKEN not in message and "\n" not in message


def test_push_checks_the_folder_first(saved: dict, tmp_path: Path) -> None:
    with pytest.raises(HfSpamError, match="not a folder"):
        push_folder_to_hub(tmp_path / "missing", "someone/x")
    for missing, pattern in (("model.safetensors", "model.safetensors is missing"),
                             ("modeling_gpt.py", "modeling_gpt.py"), ("tokenizer.json", "tokenizer.json"),
                             ("config.json", "config.json is missing")):
        copy = tmp_path / f"copy-{missing}"
        shutil.copytree(saved["folder"], copy, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))
        if missing != "model.safetensors":
            (copy / "model.safetensors").write_bytes(b"weights")
        (copy / missing).unlink(missing_ok=True)
        with pytest.raises(HfSpamError, match=pattern):
            push_folder_to_hub(copy, "someone/x")
    no_map = tmp_path / "no-auto-map"
    shutil.copytree(saved["folder"], no_map, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((no_map / "config.json").read_text())
    del config["auto_map"]
    (no_map / "config.json").write_text(json.dumps(config))
    with pytest.raises(HfSpamError, match="auto_map"):
        push_folder_to_hub(no_map, "someone/x")
    leaky = tmp_path / "leaky"
    shutil.copytree(saved["folder"], leaky, ignore=shutil.ignore_patterns("checkpoint-*"))
    (leaky / "notes.md").write_text(f"token {FAKE_TOKEN}")
    with pytest.raises(HfSpamError, match="contains the Hugging Face token") as info:
        push_folder_to_hub(leaky, "someone/x", token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(info.value)


class _Unauthorised(http.server.BaseHTTPRequestHandler):
    """A Hub stand-in that refuses every request with 401, remembering what it was sent."""

    seen: list[tuple[str, str, str]] = []

    def _refuse(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse  # noqa: N815 - http.server's method names

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def test_push_script_unauthorised_is_one_line_without_token(saved: dict, root: Path, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorised)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = subprocess_env(
            tmp_path, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
            NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        )
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(proxy, None)
        proc = subprocess.run(
            [sys.executable, "scripts/push_to_hub.py", str(saved["folder"]), "--repo_id", "someone/gpt-spam",
             "--token", FAKE_TOKEN],
            cwd=root, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 3, proc.stderr
    assert FAKE_TOKEN not in proc.stderr and FAKE_TOKEN not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "401" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # It really asked the server, with the token.
    assert ("POST", "/api/repos/create", f"Bearer {FAKE_TOKEN}") in _Unauthorised.seen


def test_push_command_bad_input_exits_2(saved: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hf_spam.cli import main

    with pytest.raises(SystemExit) as info:
        main(["push", str(tmp_path / "nothing"), "--repo_id", "someone/x", "--token", FAKE_TOKEN])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and FAKE_TOKEN not in err
    with pytest.raises(SystemExit) as info:
        main(["push", str(saved["folder"]), "--repo_id", "no spaces allowed"])
    assert info.value.code == 2 and "repo_id" in capsys.readouterr().err
