"""SpamClassifier (order, batch independence, pooling/padding, empty texts, streaming, the pipeline's answers, native
GPT-2 folders) and the hf-spam CLI."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import scaled_tiny_model
from transformers import GPT2Config, GPT2ForSequenceClassification, pipeline

from hf_spam import GPTSpamForSequenceClassification
from hf_spam.cli import main as cli_main
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.hub import save_model_folder
from hf_spam.metrics import compute_metrics, confusion_matrix
from hf_spam.predict import SpamClassifier
from hf_spam.tokenization import PAD_TOKEN_ID, build_hf_tokenizer, get_encoding, pad_and_truncate, save_hf_tokenizer

TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry",
    "Ok lar...",
    "",
    "a message with <|endoftext|> inside it, twice: <|endoftext|>",
    "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt the word: CLAIM to No: 81010",
    "Nah I don't think he goes to usf, he lives around here though",
    "word " * 1500,  # longer than the context: cut
    "   ",
    "Is that seriously how you spell his name?",
]


tiny_model = scaled_tiny_model
PIPELINE_PARAMETERS = [{}, {"top_k": None}, {"top_k": 1}, {"top_k": 2, "function_to_apply": "sigmoid"},
                       {"function_to_apply": "NONE"}]


def native_gpt2_folder(folder: Path, seed: int = 0, **config: Any) -> Path:
    """A random native GPT-2 classifier folder (``GPT2ForSequenceClassification`` and GPT-2's tokenizer files), the
    kind ``hf-spam export --format transformers`` writes; its head scaled up so that scores differ between texts."""
    torch.manual_seed(seed)
    model = GPT2ForSequenceClassification(GPT2Config(
        n_layer=2, n_embd=64, n_head=4, pad_token_id=PAD_TOKEN_ID, num_labels=2, id2label={0: "ham", 1: "spam"},
        label2id={"ham": 0, "spam": 1}, **config)).eval()
    with torch.no_grad():
        model.score.weight.mul_(30.0)
    model.save_pretrained(folder)
    save_hf_tokenizer(build_hf_tokenizer(), folder)
    return folder


def assert_same(got: Any, want: Any, tol: float = 1e-5) -> None:
    """``got`` has the shape of the pipeline's answer ``want`` (lists, ``{"label", "score"}``), its labels in the same
    order and its scores within ``tol``."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            assert_same(g, w, tol)
    else:
        assert isinstance(got, dict) and got.keys() == {"label", "score"} and got["label"] == want["label"], (got, want)
        assert got["score"] == pytest.approx(want["score"], abs=tol)


@pytest.fixture()
def one_thread():
    """One intra-op thread: on small shared CPUs a tiny model runs several times faster this way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, bpe_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    variants = {
        "last_non_pad": {"pooling": "last_non_pad"},
        "last_padded": {"pooling": "last", "padded_length": 40},  # the chapter: pad to the longest train text
        "last_dynamic": {"pooling": "last"},  # no padded length stored
        "mean": {"pooling": "mean", "causal": False},
    }
    return {
        name: save_model_folder(tiny_model(seed=i, **cfg), root / name, bpe_dir=bpe_dir)
        for i, (name, cfg) in enumerate(variants.items())
    } | {"native": native_gpt2_folder(root / "native", n_positions=128)}


def reference_probability(model: torch.nn.Module, ids: list[int], length: int | None = None) -> float:
    """P(spam) of one text computed directly: the model on its ids (padded to ``length`` like training)."""
    ids = ids or [PAD_TOKEN_ID]
    if length is None:
        input_ids, mask = ids, [1] * len(ids)
    else:
        input_ids, mask = pad_and_truncate(ids, length)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([input_ids]), attention_mask=torch.tensor([mask])).logits
    return logits.softmax(-1)[0, 1].item()


# --------------------------------------------------------------------------------------------
# SpamClassifier
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["last_non_pad", "last_padded", "last_dynamic", "mean"])
def test_batched_predictions_equal_one_at_a_time_in_input_order(
    folders: dict[str, Path], bpe_dir: Path, variant: str, one_thread: None
) -> None:
    clf = SpamClassifier.from_pretrained(folders[variant], device="cpu")
    batched = clf.predict(TEXTS, batch_size=4)
    single = [clf.predict(text)[0] for text in TEXTS]
    assert [r["text"] for r in batched] == TEXTS
    for b, s in zip(batched, single):
        assert b["spam_probability"] == pytest.approx(s["spam_probability"], abs=1e-5)
        assert b["label"] == ("spam" if b["spam_probability"] > 0.5 else "ham")
    probs = [r["spam_probability"] for r in batched]
    assert max(probs) - min(probs) > 0.01, "the test texts should get different scores"

    # The same numbers as the model itself on the training-time inputs.
    enc = get_encoding(bpe_dir)
    model = GPTSpamForSequenceClassification.from_pretrained(folders[variant]).eval()
    padded = model.config.padded_length if variant == "last_padded" else None
    cut = padded or 1024
    for text, record in zip(TEXTS, batched):
        ids = enc.encode_ordinary(text)[:cut]
        assert record["spam_probability"] == pytest.approx(reference_probability(model, ids, padded), abs=1e-5)


def test_last_pooling_pads_to_the_trained_length(folders: dict[str, Path]) -> None:
    clf = SpamClassifier.from_pretrained(folders["last_padded"], device="cpu")
    assert clf.config.fixed_length == 40 and clf.config.max_input_tokens == 40 and clf.model.active_pooling == "last"
    ids = clf.encode(TEXTS)
    assert max(len(x) for x in ids) == 40 and ids[2] == [PAD_TOKEN_ID]  # an empty text: one <|endoftext|>
    dynamic = SpamClassifier.from_pretrained(folders["last_dynamic"], device="cpu")
    assert dynamic.config.fixed_length is None and dynamic.config.max_input_tokens == 1024
    assert dynamic.model.active_pooling == "last_non_pad"
    # Without a stored padded length, `last` reads the last real token: padding cannot change it.
    text = "Call now to claim your prize"
    alone = dynamic.predict([text])[0]["spam_probability"]
    with_long_neighbour = dynamic.predict([text, "x " * 200], batch_size=2)[0]["spam_probability"]
    assert alone == pytest.approx(with_long_neighbour, abs=1e-5)


def test_empty_text_is_one_end_of_text_token(folders: dict[str, Path]) -> None:
    clf = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu")
    model = GPTSpamForSequenceClassification.from_pretrained(folders["last_non_pad"]).eval()
    (record,) = clf.predict([""])
    assert record["text"] == "" and record["label"] in ("ham", "spam")
    assert record["spam_probability"] == pytest.approx(reference_probability(model, [PAD_TOKEN_ID]), abs=1e-6)
    beside_a_long_text = clf.predict(["", "a much longer message " * 10], batch_size=2)[0]  # padded in its batch
    assert beside_a_long_text["spam_probability"] == pytest.approx(record["spam_probability"], abs=1e-6)
    assert clf.predict([], batch_size=8) == []
    assert "text" not in clf.predict(["hi"], return_text=False)[0]


def test_bf16_and_remote_code_paths_agree(folders: dict[str, Path]) -> None:
    fp32 = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu").predict(TEXTS[:6])
    bf16 = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu", dtype="bfloat16").predict(TEXTS[:6])
    remote = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu", trust_remote_code=True)
    assert type(remote.model).__module__.startswith("transformers_modules.")
    for a, b, c in zip(fp32, bf16, remote.predict(TEXTS[:6])):
        assert b["spam_probability"] == pytest.approx(a["spam_probability"], abs=0.05)
        assert c["spam_probability"] == pytest.approx(a["spam_probability"], abs=1e-6)


def test_folder_tokenizer_needs_no_download(folders: dict[str, Path], bpe_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_SPAM_BPE_DIR", raising=False)
    enc = get_encoding(folders["mean"])  # the folder's own vocab.json/merges.txt, sha256-checked
    assert SpamClassifier.from_pretrained(folders["mean"], device="cpu").encoding is enc
    reference = get_encoding(bpe_dir)
    for text in TEXTS:
        assert enc.encode_ordinary(text) == reference.encode_ordinary(text)


def test_predict_stream_is_lazy_bounded_and_ordered(folders: dict[str, Path], one_thread: None) -> None:
    clf = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu")
    n, chunk = 20_000, 1_000
    consumed = 0

    def lines():
        nonlocal consumed
        for i in range(n):
            consumed += 1
            yield f"message {i} {'win cash now ' * (i % 7)}\r\n" if i % 3 else f"line {i}\n"

    count = 0
    for count, record in enumerate(clf.predict_stream(lines(), batch_size=250, chunk_size=chunk), start=1):
        # Never more than one chunk read ahead of what has been handed out: memory is bounded.
        assert consumed <= (count - 1) // chunk * chunk + chunk
        i = count - 1
        assert record["text"] == (f"message {i} {'win cash now ' * (i % 7)}" if i % 3 else f"line {i}")
    assert count == n and consumed == n
    # Results within a chunk do not depend on the chunk's sorting/batching.
    some = [f"message {i} {'win cash now ' * (i % 7)}" for i in range(1, 40, 3)]
    streamed = [r["spam_probability"] for r in clf.predict_stream(iter(some), batch_size=3, chunk_size=5)]
    direct = [r["spam_probability"] for r in clf.predict(some, batch_size=64)]
    assert streamed == pytest.approx(direct, abs=1e-5)


@pytest.mark.parametrize("variant", ["last_padded", "mean", "native"])
def test_calling_the_classifier_answers_like_the_pipeline(folders: dict[str, Path], variant: str) -> None:
    clf = SpamClassifier.from_pretrained(folders[variant], device="cpu")
    pipe = pipeline("text-classification", model=str(folders[variant]), trust_remote_code=True)
    texts = [t for t in TEXTS if t and len(t) < 500]  # the pipeline can run GPT-2 on neither an empty nor a long text
    for inputs in (texts[0], texts):
        for parameters in PIPELINE_PARAMETERS:
            assert_same(clf(inputs, batch_size=3, **parameters), pipe(inputs, **parameters))
    spam = [next(r["score"] for r in ranked if r["label"] == "spam") for ranked in clf(texts, top_k=None,
                                                                                      function_to_apply="none")]
    assert max(spam) - min(spam) > 0.1, "the test texts should get different logits"


def test_a_native_gpt2_folder_is_cut_to_its_context(folders: dict[str, Path], bpe_dir: Path) -> None:
    clf = SpamClassifier.from_pretrained(folders["native"], device="cpu")
    assert isinstance(clf.model, GPT2ForSequenceClassification) and clf.inputs == {
        "max_input_tokens": 128, "fixed_length": None, "pooling": "last_non_pad", "training_length": None}
    model, enc = GPT2ForSequenceClassification.from_pretrained(folders["native"]).eval(), get_encoding(bpe_dir)
    for text, record in zip(TEXTS, clf.predict(TEXTS, batch_size=4)):  # a long text cut, an empty one <|endoftext|>
        assert record["spam_probability"] == pytest.approx(
            reference_probability(model, enc.encode_ordinary(text)[:128]), abs=1e-5)
    with pytest.raises(HfSpamError, match="no auto_map"):
        SpamClassifier.from_pretrained(folders["native"], trust_remote_code=True)


def test_bad_input_is_a_clear_error(folders: dict[str, Path], tmp_path: Path) -> None:
    clf = SpamClassifier.from_pretrained(folders["last_non_pad"], device="cpu")
    with pytest.raises(HfSpamError, match=r"texts\[1\]: expected str, got int"):
        clf.predict(["ok", 3])
    for parameters, match in [({"top_k": 0}, "top_k: 0"), ({"top_k": True}, "top_k: True"), ({"top_k": "2"}, "top_k"),
                              ({"function_to_apply": "relu"}, "function_to_apply: 'relu'; expected one of softmax"),
                              ({"truncation": True}, "parameters: expected")]:
        with pytest.raises(HfSpamError, match=match):
            clf("ok", **parameters)
    with pytest.raises(HfSpamError, match="batch_size"):
        clf.predict(["ok"], batch_size=0)
    with pytest.raises(HfSpamError, match="chunk_size"):
        list(clf.predict_stream(["ok"], chunk_size=0))
    with pytest.raises(HfSpamError, match="--dtype int4: unknown; expected one of auto"):
        SpamClassifier.from_pretrained(folders["last_non_pad"], dtype="int4")
    with pytest.raises(HfSpamError, match="not a model folder"):
        SpamClassifier.from_pretrained(tmp_path / "missing")
    with pytest.raises(UnavailableError, match="Hub id"):  # offline: names both places it looked
        SpamClassifier.from_pretrained("someone/not-cached-here")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(HfSpamError, match="expected an hf-spam model"):
        SpamClassifier.from_pretrained(other)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folders["mean"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HfSpamError, match="could not load the model"):
        SpamClassifier.from_pretrained(broken)


# --------------------------------------------------------------------------------------------
# The hf-spam command
# --------------------------------------------------------------------------------------------


def hf_spam_command() -> list[str]:
    script = Path(sys.executable).with_name("hf-spam")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hf_spam.cli"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(hf_spam_command() + args, capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(), timeout=300, **kwargs)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_cli_predict_texts_as_arguments(folders: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    texts = ["WIN a £1000 prize, call 09061701461 now", "", "see you at 6? <|endoftext|>", "trailing newline\n"]
    cli_main(["predict", "--model", str(folders["last_padded"]), "--batch_size", "2", *texts])
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    expected = SpamClassifier.from_pretrained(folders["last_padded"], device="cpu").predict(texts)
    assert [r["text"] for r in records] == texts  # arguments are used exactly as given
    for got, want in zip(records, expected):
        assert set(got) == {"text", "label", "probabilities", "spam_probability"} and got["label"] == want["label"]
        assert got["spam_probability"] == pytest.approx(want["spam_probability"], abs=1e-5)


def test_cli_predict_file_with_empty_lines(folders: dict[str, Path], tmp_path: Path) -> None:
    lines = ["first message", "", "Ünïcode ✓ and tabs\tinside", "", "windows line end", "last line, no newline"]
    path = tmp_path / "messages.txt"
    path.write_bytes(("\n".join(lines[:4]) + "\n" + lines[4] + "\r\n" + lines[5]).encode("utf-8"))
    proc = run_cli(["predict", "--model", str(folders["mean"]), "--file", str(path), "--chunk_size", "2"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bars or warnings mixed in
    records = json_lines(proc.stdout)
    assert [r["text"] for r in records] == lines
    expected = SpamClassifier.from_pretrained(folders["mean"], device="cpu").predict(lines)
    assert [r["spam_probability"] for r in records] == pytest.approx(
        [r["spam_probability"] for r in expected], abs=1e-5
    )


def test_cli_predict_streams_stdin(folders: dict[str, Path]) -> None:
    """Output starts before stdin ends (streaming), and 5,000 lines come back complete and in order.

    The 100,000-line case: ``seq 100000 | sed 's/^/message /' > big.txt``, then
    ``/usr/bin/time -v hf-spam predict --model FOLDER --file big.txt > out.jsonl``; the maximum
    resident size stays that of a 10,000-line run (one ``--chunk_size`` of texts in memory).
    """
    n, chunk = 5_000, 500
    proc = subprocess.Popen(
        hf_spam_command() + ["predict", "--model", str(folders["last_non_pad"]), "--chunk_size", str(chunk),
                             "--batch_size", "250"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        env=cli_env(),
    )
    out_lines: queue.Queue[str | None] = queue.Queue()

    def read_stdout() -> None:
        for line in proc.stdout:
            out_lines.put(line)
        out_lines.put(None)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        proc.stdin.write("".join(f"sms {i}\n" for i in range(chunk)))
        proc.stdin.flush()
        # stdin is still open: the first chunk's results must arrive anyway.
        first = json.loads(out_lines.get(timeout=240))
        assert first["text"] == "sms 0"
        proc.stdin.write("".join(f"sms {i}\n" if i % 700 else "\n" for i in range(chunk, n)))
        proc.stdin.close()
        records = [first]
        while (line := out_lines.get(timeout=240)) is not None:
            records.append(json.loads(line))
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(records) == n
    assert [r["text"] for r in records] == [f"sms {i}" if i % 700 or i < chunk else "" for i in range(n)]
    assert all(r["label"] in ("ham", "spam") for r in records)


def test_cli_errors_are_one_line_without_traceback(folders: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    # In-process: an exception other than SystemExit (a traceback) would fail pytest.raises.
    for args, needle in (
        (["predict", "--model", str(tmp_path / "no-model"), "hello"], "no-model: not a model folder"),
        (["predict", "--model", str(folders["mean"]), "--file", str(tmp_path / "none.txt")], "file not found"),
        (["predict", "--model", str(folders["mean"]), "--batch_size", "0", "x"], "batch_size"),
        (["evaluate", "--model", str(folders["mean"]), "--labelled_file", str(tmp_path / "none.tsv")], "not found"),
    ):
        with pytest.raises(SystemExit) as info:
            cli_main(args)
        captured = capsys.readouterr()
        assert info.value.code == 2 and captured.out == ""
        assert captured.err.startswith("error: ") and needle in captured.err and captured.err.count("\n") == 1
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(SystemExit) as info:
        cli_main(["predict", "--model", str(folders["mean"]), "--file", str(bad)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "not UTF-8" in captured.err and str(bad) in captured.err


def test_cli_evaluate_labelled_file(folders: dict[str, Path], sms_file: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    rows = sms_file.read_text(encoding="utf-8").splitlines()[:40]
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out_dir = tmp_path / "eval"
    cli_main(["evaluate", "--model", str(folders["last_padded"]), "--labelled_file", str(labelled),
              "--output_dir", str(out_dir)])
    stdout = capsys.readouterr().out

    texts = [r.split("\t", 1)[1] for r in rows]
    truth = [1 if r.startswith("spam\t") else 0 for r in rows]
    records = SpamClassifier.from_pretrained(folders["last_padded"], device="cpu").predict(texts)
    predicted = [1 if r["label"] == "spam" else 0 for r in records]
    metrics = compute_metrics(predicted, truth)
    cm = confusion_matrix(predicted, truth)
    saved = json.loads((out_dir / "eval_metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1"):
        assert saved[key] == pytest.approx(metrics[key])
        assert f"{metrics[key] * 100:6.2f}%" in stdout
    assert saved["examples"] == 40 and saved["confusion_matrix"]["rows_true_columns_predicted"] == cm.tolist()
    assert str(tmp_path) not in json.dumps(saved)
    assert "Confusion matrix" in stdout and "all 40 messages of labelled.tsv" in stdout
    assert f"{'ham':<8}{cm[0, 0]:>8}{cm[0, 1]:>8}\n{'spam':<8}{cm[1, 0]:>8}{cm[1, 1]:>8}" in stdout
    import matplotlib.image

    assert (out_dir / "confusion-matrix.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert matplotlib.image.imread(out_dir / "confusion-matrix.png").shape[0] > 100
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]


def test_cli_evaluate_on_the_chapter_test_split(folders: dict[str, Path], sms_file: Path,
                                               capsys: pytest.CaptureFixture, one_thread: None) -> None:
    cli_main(["evaluate", "--model", str(folders["last_non_pad"]), "--data_file", str(sms_file)])
    out = capsys.readouterr().out
    assert "the test split (300 rows) of SMSSpamCollection" in out
    assert "accuracy" in out and "Confusion matrix" in out
    counts = [int(x) for line in out.splitlines()[-2:] for x in line.split()[1:]]
    assert sum(counts) == 300
