"""Deployment: the ONNX export checked with onnxruntime, the Inference Endpoints handler without hf_spam, and
the HTTP server on a free port of 127.0.0.1 (the pipeline's answers on both routes, huggingface_hub's
InferenceClient, order under concurrency, every error, /metrics, /docs, shutdown; torch, onnx, native GPT-2)."""

from __future__ import annotations

import json
import os
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
from typing import Any

import pytest
from conftest import scaled_tiny_model
from prometheus_client.parser import text_string_to_metric_families
from test_predict import PIPELINE_PARAMETERS, assert_same, native_gpt2_folder
from transformers import pipeline

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


def requests_of(texts: list[str]) -> list[dict]:
    """Requests of every shape: one text or several, each set of parameters, and no ``parameters`` at all."""
    inputs = [texts[0], texts[1:6], texts[6], texts[7:10], texts[10:14]]
    return [{"inputs": x, **({"parameters": p} if p else {})} for x, p in zip(inputs, PIPELINE_PARAMETERS)] + [
        {"inputs": texts[14:17], "parameters": {}}, {"inputs": texts[17], "parameters": None}]


def pipeline_answers(folder: Path, requests: list[dict]) -> list:
    """What ``pipeline("text-classification")`` answers to each request (the contract)."""
    pipe = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    return [pipe(r["inputs"], **(r.get("parameters") or {})) for r in requests]


@pytest.fixture(scope="module")
def expected(folders, texts) -> list:
    return pipeline_answers(folders["last_40"], requests_of(texts))


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
    assert [onnx_classifier(tmp_path / name, folders["last_non_pad"]).arithmetic.dtype
            for name in ("m.onnx", "m-int8.onnx")] == ["float32", "int8"]  # what /info reports for each


def test_a_damaged_onnx_file_is_one_clear_error(folders, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(HfSpamError, match=r"bad\.onnx: not a readable ONNX model"):
        onnx_classifier(tmp_path / "bad.onnx", folders["last_40"])


def test_handler_server_and_pipeline_give_the_same_answers(folders, texts, expected, server, tmp_path):
    requests = requests_of(texts)
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from handler import EndpointHandler

        handler = EndpointHandler(sys.argv[1])
        answers, refused = [handler(r) for r in json.loads(sys.argv[2])], []
        for bad in ({"inputs": 3}, {"inputs": "x", "parameters": [1]}):
            try:
                handler(bad)
                refused.append(False)
            except ValueError:
                refused.append(True)
        print(json.dumps({"answers": answers, "refused": refused, "hf_spam": "hf_spam" in sys.modules}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(folders["last_40"]), json.dumps(requests)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam"] is False and got["refused"] == [True, True]
    assert len(got["answers"]) == len(expected) == len(requests)
    for request, by_handler, by_pipeline in zip(requests, got["answers"], expected):
        assert_same(by_handler, by_pipeline, 1e-6)
        status, by_server = server.predict(request)
        assert status == 200
        assert_same(by_server, by_handler)


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

    def request(self, path: str, body: bytes | None = None) -> tuple[int, Any, dict]:
        status, text, headers = self.text(path, body)
        return status, json.loads(text), headers

    def text(self, path: str, body: bytes | None = None) -> tuple[int, str, dict]:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request(path)[:2]

    def predict(self, payload: object, path: str = "/predict") -> tuple[int, Any]:
        return self.request(path, json.dumps(payload).encode())[:2]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(folders):
    srv = Server(folders["last_40"], "--max_texts_per_request", "64", "--max_chars_per_request", "4000",
                 "--max_queue", "100", "--max_wait_ms", "20")
    yield srv
    srv.stop()


def test_server_answers_like_the_pipeline_on_both_routes_and_keeps_order_under_concurrency(server, folders, texts,
                                                                                           expected):
    for path in ("/", "/predict"):
        for request, want in zip(requests_of(texts), expected):
            status, got = server.predict(request, path)
            assert status == 200, got
            assert_same(got, want)
    scores = {round(r["score"], 4) for r in server.predict({"inputs": texts[:20]})[1]}
    assert len(scores) > 10  # the texts score differently: the comparisons mean something
    # 24 clients at once, each its own texts and parameters: every answer is its own, in its order.
    requests = [{"inputs": texts[i : i + 1 + i % 4], "parameters": PIPELINE_PARAMETERS[i % 5]} for i in range(24)]
    answers: dict[int, tuple] = {}

    def client(i: int) -> None:
        answers[i] = server.predict(requests[i], "/" if i % 2 else "/predict")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(answers) == list(range(24))
    for (status, got), want in zip((answers[i] for i in range(24)), pipeline_answers(folders["last_40"], requests)):
        assert status == 200
        assert_same(got, want)
    status, info = server.get("/info")
    assert status == 200 and info["labels"] == ["ham", "spam"] and info["training_length"] == 40
    assert info["model_type"] == "hf_spam_gpt" and info["fixed_length"] == 40 and info["workers"] == 2


def test_huggingface_hub_inference_client_works_against_the_server(server, folders, texts, tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        from huggingface_hub import InferenceClient

        url, text = sys.argv[1], sys.argv[2]
        answers = [InferenceClient(model=url + "/predict").text_classification(text),
                   InferenceClient(model=url).text_classification(text, top_k=2, function_to_apply="sigmoid")]
        print(json.dumps([{"label": a.label, "score": a.score} for a in answers]))
        """
    )
    # The offline switches of the tests make the client refuse even 127.0.0.1.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", script, server.url, texts[3]], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipe = pipeline("text-classification", model=str(folders["last_40"]), trust_remote_code=True)
    # The client keeps the first entry of the pipeline's answer: the best label.
    assert_same(json.loads(proc.stdout.strip().splitlines()[-1]),
                [pipe(texts[3])[0], pipe(texts[3], top_k=2, function_to_apply="sigmoid")[0]])


def test_server_errors_have_the_right_status_and_it_keeps_serving(server):
    cases = [
        (b'{"inputs": ["caf\xe9"]}', 400),  # not UTF-8
        (b"{not json", 422),
        (json.dumps({"texts": ["the old contract"]}).encode(), 422),
        (json.dumps({"inputs": ["ok", 3]}).encode(), 422),
        (json.dumps({"inputs": 3}).encode(), 422),
        (json.dumps(["no", "object"]).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": {"top_k": 0}}).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": {"top_k": "2"}}).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": {"top_k": True}}).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": {"function_to_apply": "relu"}}).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": {"truncation": True}}).encode(), 422),
        (json.dumps({"inputs": "x", "parameters": [1]}).encode(), 422),
        (json.dumps({"inputs": ["x"] * 65}).encode(), 413),
        (json.dumps({"inputs": ["x" * 4001]}).encode(), 413),
        (json.dumps({"inputs": ["y"] * 64, "parameters": None}).encode(), 200),
        (json.dumps({"inputs": "y", "parameters": {"top_k": None, "function_to_apply": "SIGMOID"}}).encode(), 200),
    ]
    for body, status in cases:
        got, payload, _ = server.request("/predict", body)
        assert got == status, (body[:40], payload)
        assert isinstance(payload, dict if status != 200 else list), payload
    assert "parameters.top_k: 0; expected a positive integer" in server.request("/", cases[6][0])[1]["error"]
    assert server.get("/health") == (200, {"status": "ok"})
    assert server.predict({"inputs": ["still here"]})[0] == 200
    assert server.predict({"inputs": []}) == (200, [])


def metric_samples(server: Server) -> dict[tuple, float]:
    status, text, headers = server.text("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_metrics_count_requests_texts_batches_and_latency(server, texts):
    before = metric_samples(server)
    for payload in ({"inputs": texts[0]}, {"inputs": texts[1:5]}, {"inputs": texts[5:7]}, {"inputs": 3},
                    {"inputs": ["x"] * 65}):
        server.predict(payload, "/")
    after = metric_samples(server)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert [grew("hf_spam_requests_total", status=s) for s in ("200", "422", "413")] == [3, 1, 1]
    assert [grew("hf_spam_texts_total", status=s) for s in ("200", "422", "413")] == [7, 0, 65]
    assert grew("hf_spam_batch_texts_sum") == 7 and 1 <= grew("hf_spam_batch_texts_count") <= 3  # each text ran once
    assert grew("hf_spam_request_seconds_count") == 5 and grew("hf_spam_request_seconds_sum") > 0
    assert after[("hf_spam_queue_texts", ())] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_up_to_workers_batches_compute_at_once(folders, texts, expected, workers):
    """A batch of one text per request, 16 requests at once: with two workers a batch starts while another
    computes (``hf_spam_batches_running``), with one never; every answer is its own either way."""
    srv = Server(folders["last_40"], "--max_batch_size", "1", "--workers", str(workers))
    try:
        assert srv.get("/info")[1]["workers"] == workers
        requests = [requests_of(texts)[i % 4] for i in range(16)]
        answers: dict[int, tuple] = {}
        threads = [threading.Thread(target=lambda i=i: answers.update({i: srv.predict(requests[i])}))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for i in range(16):
            assert answers[i][0] == 200
            assert_same(answers[i][1], expected[i % 4])
        samples = metric_samples(srv)
        started, overlapped = (samples[("hf_spam_batches_running_" + k, ())] for k in ("count", "sum"))
        assert started >= 16  # one text per batch
        assert (overlapped > 0) == (workers == 2), overlapped
        assert samples[("hf_spam_batches_running_bucket", (("le", str(float(workers - 1))),))] == started
    finally:
        srv.stop()
    refused = subprocess.run([HF_SPAM, "serve", "--model", str(folders["last_40"]), "--workers", "0"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--workers must be positive" in refused.stderr


def test_openapi_documents_the_contract(server):
    status, spec = server.get("/openapi.json")
    assert status == 200
    for path in ("/", "/predict"):
        post = spec["paths"][path]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["inputs"] and set(schema["properties"]) == {"inputs", "parameters"}
        parameters = schema["properties"]["parameters"]["properties"]
        assert set(parameters) == {"top_k", "function_to_apply"}
        assert parameters["function_to_apply"]["enum"] == ["softmax", "sigmoid", "none"]
        assert "LabelScore" in json.dumps(post["responses"]["200"]) and {"400", "413", "422", "503"} <= set(
            post["responses"])
        for example in schema["examples"]:  # the documented requests are answered
            assert server.predict(example, path)[0] == 200
    assert set(spec["components"]["schemas"]["LabelScore"]["properties"]) == {"label", "score"}
    status, page, _ = server.text("/docs")
    assert status == 200 and "swagger" in page.lower() and "/openapi.json" in page


def test_full_queue_is_503_with_retry_after_and_shutdown_finishes_accepted_requests(folders, texts):
    srv = Server(folders["last_non_pad"], "--max_queue", "4", "--max_wait_ms", "1500")
    try:
        status, payload, headers = srv.request("/predict", json.dumps({"inputs": texts[:5]}).encode())
        assert status == 503 and headers.get("retry-after") == "1" and "queue is full" in payload["error"]
        result: dict = {}
        waiting = threading.Thread(target=lambda: result.update(answer=srv.predict({"inputs": texts[:3]})))
        waiting.start()  # held in the batcher for up to 1.5 s
        time.sleep(0.5)
        code = srv.stop()  # SIGTERM while the request is in the queue
        waiting.join(timeout=60)
        assert result["answer"][0] == 200 and len(result["answer"][1]) == 3
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once the requests are done
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_onnx_backend_serves_the_same_answers(folders, onnx_files, texts, expected):
    srv = Server(folders["last_40"], "--backend", "onnx", "--onnx_file", str(onnx_files["last_40"]))
    try:
        info = srv.get("/info")[1]
        assert info["backend"] == "onnx" and (info["dtype"], info["dtype_requested"]) == ("float32", "the ONNX file")
        for request, want in zip(requests_of(texts), expected):
            status, got = srv.predict(request, "/")
            assert status == 200
            assert_same(got, want, 1e-4)
    finally:
        srv.stop()
    missing = subprocess.run([HF_SPAM, "serve", "--model", str(folders["last_40"]), "--backend", "onnx"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no ONNX file; export one first: hf-spam export" in missing.stderr


def test_a_native_gpt2_folder_is_served_like_its_pipeline(tmp_path, texts):
    folder = native_gpt2_folder(tmp_path / "native", seed=3)
    requests = requests_of(texts)
    srv = Server(folder)
    try:
        assert srv.get("/info")[1]["model_type"] == "gpt2"
        for request, want in zip(requests, pipeline_answers(folder, requests)):
            status, got = srv.predict(request)
            assert status == 200
            assert_same(got, want)
    finally:
        srv.stop()
