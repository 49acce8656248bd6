"""Deployment: the ONNX export checked with onnxruntime, the Inference Endpoints handler without hf_spam, and
the HTTP server on a free port of 127.0.0.1 (predictions, order under concurrency, every error, shutdown)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import scaled_tiny_model

from hf_spam.cli import main as cli_main
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError
from hf_spam.export import export_onnx, onnx_classifier
from hf_spam.hub import save_model_folder
from hf_spam.predict import SpamClassifier

HF_SPAM = str(Path(sys.executable).with_name("hf-spam"))


@pytest.fixture(scope="module")
def texts(sms_file) -> list[str]:
    return list(load_sms_spam(sms_file)["test"]["text"][:48])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bpe_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    variants = {"last_40": {"pooling": "last", "padded_length": 40}, "last_non_pad": {"pooling": "last_non_pad"},
                "last_dynamic": {"pooling": "last"}}  # no trained length: reads the last real token
    return {name: save_model_folder(scaled_tiny_model(seed=i, **cfg), root / name, bpe_dir=bpe_dir)
            for i, (name, cfg) in enumerate(variants.items())}


@pytest.fixture(scope="module")
def onnx_files(folders, texts, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {name: Path(export_onnx(folder, out / f"{name}.onnx", texts)["file"]) for name, folder in folders.items()}


@pytest.mark.parametrize("name", ["last_40", "last_non_pad", "last_dynamic"])
def test_onnx_export_matches_pytorch(folders, onnx_files, texts, name):
    ours = SpamClassifier.from_pretrained(folders[name], device="cpu").predict_labels(texts)
    onnx = onnx_classifier(onnx_files[name], folders[name]).predict_labels(texts)
    assert [r["label"] for r in onnx] == [r["label"] for r in ours]
    for a, b in zip(onnx, ours):
        assert a["probabilities"]["spam"] == pytest.approx(b["probabilities"]["spam"], abs=1e-4)
    spread = [r["probabilities"]["spam"] for r in ours]
    assert max(spread) - min(spread) > 0.01  # the texts score differently: the comparison means something


def test_export_command_prints_the_check_and_int8_accuracy(folders, sms_file, tmp_path, capsys):
    cli_main(["export", "--model", str(folders["last_non_pad"]), "--output", str(tmp_path / "m.onnx"), "--data_file",
              str(sms_file), "--quantize", "int8", "--check_texts", "16"])
    out = capsys.readouterr().out
    assert "onnxruntime vs PyTorch on 16 test texts: max |logit difference|" in out
    assert "(300 texts)" in out and "float32" in out and "int8" in out
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m-int8.onnx").stat().st_size < (
        tmp_path / "m.onnx").stat().st_size / 2


def test_a_damaged_onnx_file_is_one_clear_error(folders, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(HfSpamError, match=r"bad\.onnx: not a readable ONNX model"):
        onnx_classifier(tmp_path / "bad.onnx", folders["last_40"])


def test_endpoint_handler_without_hf_spam(folders, texts, tmp_path):
    folder = folders["last_40"]
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from handler import EndpointHandler

        handler = EndpointHandler(sys.argv[1])
        texts = json.loads(sys.argv[2])
        one, many = handler({"inputs": texts[0]}), handler({"inputs": texts})
        try:
            handler({"inputs": 3})
            refused = False
        except ValueError:
            refused = True
        print(json.dumps({"one": one, "many": many, "refused": refused, "hf_spam": "hf_spam" in sys.modules}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(texts)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam"] is False and got["refused"] is True
    expected = SpamClassifier.from_pretrained(folder, device="cpu").predict_labels(texts)
    assert [r["label"] for r in got["many"]] == [r["label"] for r in expected]  # like pipeline: label + score
    for result, want in zip(got["many"], expected):
        assert result["score"] == pytest.approx(want["probabilities"][want["label"]], abs=1e-5)
    assert got["one"][0]["label"] == expected[0]["label"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hf-spam serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, folder: Path, *args: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen([HF_SPAM, "serve", "--model", str(folder), "--port", self.url.rsplit(":", 1)[1],
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if self.get("/health") == (200, {"status": "ok"}):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not start")

    def request(self, path: str, body: bytes | None = None) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request(path)[:2]

    def predict(self, payload: object) -> tuple[int, dict]:
        return self.request("/predict", json.dumps(payload).encode())[:2]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(folders):
    srv = Server(folders["last_40"], "--max_texts_per_request", "64", "--max_chars_per_request", "4000",
                 "--max_queue", "100", "--max_wait_ms", "20")
    yield srv
    srv.stop()


def test_server_predicts_like_the_classifier_and_keeps_order_under_concurrency(server, folders, texts):
    expected = SpamClassifier.from_pretrained(folders["last_40"], device="cpu").predict_labels(texts)
    status, body = server.predict({"texts": texts[:10]})
    assert status == 200 and [r["label"] for r in body["results"]] == [r["label"] for r in expected[:10]]
    for got, want in zip(body["results"], expected):
        assert got["probabilities"]["spam"] == pytest.approx(want["probabilities"]["spam"], abs=1e-5)
    assert server.predict({"inputs": texts[3]})[1]["results"][0]["label"] == expected[3]["label"]
    # 24 clients at once, each its own slice of texts: every answer is its own, in its order.
    answers: dict[int, list] = {}

    def client(i: int) -> None:
        answers[i] = server.predict({"texts": texts[i : i + 1 + i % 4]})[1]["results"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, results in answers.items():
        assert [r["probabilities"]["spam"] for r in results] == pytest.approx(
            [r["probabilities"]["spam"] for r in expected[i : i + 1 + i % 4]], abs=1e-5)
    assert len(answers) == 24
    status, info = server.get("/info")
    assert status == 200 and info["labels"] == ["ham", "spam"] and info["training_length"] == 40


def test_server_errors_have_the_right_status_and_it_keeps_serving(server):
    cases = [
        (b'{"texts": ["caf\xe9"]}', 400),  # not UTF-8
        (b"{not json", 422),
        (json.dumps({"texts": "one string"}).encode(), 422),
        (json.dumps({"texts": ["ok", 3]}).encode(), 422),
        (json.dumps(["no", "object"]).encode(), 422),
        (json.dumps({"texts": ["x"] * 65}).encode(), 413),
        (json.dumps({"texts": ["x" * 4001]}).encode(), 413),
        (json.dumps({"texts": ["y"] * 64, "inputs": 1}).encode(), 200),
    ]
    for body, status in cases:
        got, payload, _ = server.request("/predict", body)
        assert got == status, (body[:40], payload)
        assert ("error" in payload) == (status != 200)
    assert server.get("/health") == (200, {"status": "ok"})
    assert server.predict({"texts": ["still here"]})[0] == 200
    assert server.predict({"texts": []}) == (200, {"results": []})


def test_full_queue_is_503_with_retry_after_and_shutdown_finishes_accepted_requests(folders, texts):
    srv = Server(folders["last_non_pad"], "--max_queue", "4", "--max_wait_ms", "1500")
    try:
        status, payload, headers = srv.request("/predict", json.dumps({"texts": texts[:5]}).encode())
        assert status == 503 and headers.get("retry-after") == "1" and "queue is full" in payload["error"]
        result: dict = {}
        waiting = threading.Thread(target=lambda: result.update(answer=srv.predict({"texts": texts[:3]})))
        waiting.start()  # held in the batcher for up to 1.5 s
        time.sleep(0.5)
        code = srv.stop()  # SIGTERM while the request is in the queue
        waiting.join(timeout=60)
        assert result["answer"][0] == 200 and len(result["answer"][1]["results"]) == 3
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once the requests are done
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_onnx_backend_serves_the_same_predictions(folders, onnx_files, texts):
    srv = Server(folders["last_40"], "--backend", "onnx", "--onnx_file", str(onnx_files["last_40"]))
    try:
        expected = SpamClassifier.from_pretrained(folders["last_40"], device="cpu").predict_labels(texts[:12])
        status, body = srv.predict({"texts": texts[:12]})
        assert status == 200 and srv.get("/info")[1]["backend"] == "onnx"
        assert [r["probabilities"]["spam"] for r in body["results"]] == pytest.approx(
            [r["probabilities"]["spam"] for r in expected], abs=1e-4)
    finally:
        srv.stop()
    missing = subprocess.run([HF_SPAM, "serve", "--model", str(folders["last_40"]), "--backend", "onnx"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no ONNX file; export one first: hf-spam export" in missing.stderr
