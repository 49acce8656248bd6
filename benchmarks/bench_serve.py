"""Serving under load: ``hf-spam serve`` started as a subprocess and driven by concurrent clients.

Each client sends one real SMS text of the test split per request (messages arriving one by one), as fast
as answers come back, for a fixed time; one request in ten of the first client is bad (malformed JSON or too
many texts) and must be answered 4xx while the good ones keep succeeding. Reported: requests/s, texts/s,
p50/p95/p99 latency of the good requests, failures, and the server's peak RSS and its growth after the
first tenth of the run. GPT-2 small's shape with random weights, `last_non_pad` pooling; the torch backend
at 1, 8 and 32 clients, the torch backend with ``--dtype bfloat16`` and ``--dtype int8`` at 32, then onnxruntime
(float32 and int8) at 32, all with the default ``--workers 2``; then torch float32 and int8 at 32 with
``--workers 1`` (one batch computing at a time).

    python benchmarks/bench_serve.py                 # about 10 minutes
    python benchmarks/bench_serve.py --quick         # tiny model, 3 s per case (smoke run)
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    BenchError,
    base_parser,
    busy_note,
    data_file_arg,
    gpt2_small_or_tiny,
    load_average,
    main_guard,
    markdown_table,
    select_cases,
    wait_until_quiet,
    write_json,
)

# case: (backend, clients, --workers: batches computing at once)
CASES = {"torch_1": ("torch", 1, 2), "torch_8": ("torch", 8, 2), "torch_32": ("torch", 32, 2),
         "torch_bf16_32": ("torch-bfloat16", 32, 2), "torch_int8_32": ("torch-int8", 32, 2),
         "onnx_float32_32": ("onnx", 32, 2), "onnx_int8_32": ("onnx-int8", 32, 2),
         "torch_32_workers1": ("torch", 32, 1), "torch_int8_32_workers1": ("torch-int8", 32, 1)}
BAD = [b"{not json", json.dumps({"inputs": ["x"] * 1000}).encode()]


def build_model(folder: Path, model_size: str, texts: list[str]) -> dict[str, Path]:
    """A random-weight classifier folder and its ONNX exports (float32, int8)."""
    import torch

    from hf_spam.export import export_onnx, quantize_int8
    from hf_spam.hub import save_model_folder
    from hf_spam.modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification

    torch.manual_seed(123)
    model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset(model_size, pooling="last_non_pad"))
    save_model_folder(model, folder)
    export_onnx(folder, folder / "model.onnx", texts[:8])
    quantize_int8(folder / "model.onnx", folder / "model-int8.onnx")
    return {"torch": folder, "onnx": folder / "model.onnx", "onnx-int8": folder / "model-int8.onnx"}


class ServerProcess:
    """The service in its own process, its RSS sampled four times a second."""

    def __init__(self, folder: Path, backend: str, onnx_file: Path | None, dtype: str | None = None,
                 workers: int = 2):
        import psutil

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [str(Path(sys.executable).with_name("hf-spam")), "serve", "--model", str(folder), "--port",
               str(self.port), "--max_queue", "4096", "--workers", str(workers)]
        if onnx_file is not None:
            cmd += ["--backend", "onnx", "--onnx_file", str(onnx_file)]
        if dtype is not None:
            cmd += ["--dtype", dtype]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.rss: list[tuple[float, float]] = []
        self.process = psutil.Process(self.proc.pid)
        deadline = time.time() + 300
        while not self._healthy():
            if self.proc.poll() is not None or time.time() > deadline:
                raise BenchError(f"the server did not start: {self.proc.stderr.read()[-500:]}")
            time.sleep(0.3)
        self.sampling = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _sample(self) -> None:
        while self.sampling:
            self.rss.append((time.perf_counter(), self.process.memory_info().rss / 2**20))
            time.sleep(0.25)

    def stop(self) -> None:
        self.sampling = False
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def drive(port: int, clients: int, duration: float, texts: list[str]) -> dict:
    """``clients`` concurrent clients for ``duration`` seconds; what they saw."""
    import httpx

    url = f"http://127.0.0.1:{port}/predict"
    good: list[float] = []
    failed, bad_4xx, bad_other = 0, 0, 0
    end = time.perf_counter() + duration

    async def client(http: httpx.AsyncClient, index: int) -> None:
        nonlocal failed, bad_4xx, bad_other
        sent = 0
        while time.perf_counter() < end:
            sent += 1
            if index == 0 and sent % 10 == 0:
                r = await http.post(url, content=BAD[sent // 10 % 2])
                bad_4xx += 400 <= r.status_code < 500
                bad_other += not 400 <= r.status_code < 500
                continue
            text = texts[(index * 7919 + sent) % len(texts)]
            started = time.perf_counter()
            try:
                r = await http.post(url, json={"inputs": text})  # the pipeline's answer: [{"label", "score"}]
                ok = r.status_code == 200 and len(r.json()) == 1 and "score" in r.json()[0]
            except httpx.HTTPError:
                ok = False
            if ok:
                good.append(time.perf_counter() - started)
            else:
                failed += 1

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients + 1)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        wall = time.perf_counter() - started
    good.sort()

    def pct(q: float) -> float:
        return 1000 * good[min(len(good) - 1, int(q * len(good)))] if good else float("nan")

    return {"requests": len(good) + failed, "failed": failed, "bad_4xx": bad_4xx, "bad_other": bad_other,
            "requests_per_s": len(good) / wall, "texts_per_s": len(good) / wall, "p50_ms": pct(0.50),
            "p95_ms": pct(0.95), "p99_ms": pct(0.99), "seconds": wall}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds each case runs (default 60).")
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    cases, machine = select_cases(args, CASES)
    duration = 3.0 if args.quick else args.duration
    from hf_spam.data import load_sms_spam

    texts = list(load_sms_spam(args.data_file)["test"]["text"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = build_model(Path(tmp) / "model", gpt2_small_or_tiny(args.quick), texts)
        for case in cases:
            backend, clients, workers = CASES[case]
            waited = wait_until_quiet(args.wait_quiet)
            kind, _, dtype = backend.partition("-")  # torch-int8: the torch backend with --dtype int8
            server = ServerProcess(files["torch"], backend, files[backend] if kind == "onnx" else None,
                                   dtype if kind == "torch" and dtype else None, workers)
            try:
                stats = asyncio.run(drive(server.port, clients, duration, texts))
            finally:
                server.stop()
            start = server.rss[0][0]
            settled = [mb for t, mb in server.rss if t - start >= duration / 10] or [server.rss[-1][1]]
            results[case] = {**stats, "backend": backend, "clients": clients, "workers": workers,
                             "peak_rss_mb": max(m for _, m in server.rss),
                             "rss_growth_mb": server.rss[-1][1] - settled[0],
                             "waited_for_quiet_s": round(waited, 1), "load_after": round(load_average(), 2)}
            print(f"  {case}: {stats['texts_per_s']:.1f} texts/s, {stats['failed']} failed", flush=True)
    rows = [[r["backend"], r["clients"], r["workers"], r["requests_per_s"], r["texts_per_s"], r["p50_ms"],
             r["p95_ms"], r["p99_ms"], r["failed"], f"{r['bad_4xx']} / {r['bad_4xx'] + r['bad_other']}",
             f"{r['peak_rss_mb']:,.0f}", f"{r['rss_growth_mb']:+.0f}"] for r in results.values()]
    size = "tiny (smoke run: not a measurement)" if args.quick else "GPT-2 small (124M) shape, random weights"
    print(f"\n### Serving, {size}, one SMS per request, {duration:g} s per case\n")
    print(markdown_table(["backend", "clients", "workers", "requests/s", "texts/s", "p50 ms", "p95 ms", "p99 ms",
                          "failed", "bad requests answered 4xx", "server peak RSS (MB)", "RSS growth (MB)"], rows))
    if "torch_1" in results and "torch_32" in results:
        ratio = results["torch_32"]["texts_per_s"] / results["torch_1"]["texts_per_s"]
        print(f"\nBatching: texts/s at 32 clients = {ratio:.1f}x texts/s at 1 client (torch backend)")
    # Each worker's forward runs on all of torch's threads, beside the event loop and the clients' process.
    import torch

    own = {case: r["workers"] * torch.get_num_threads() + 2 for case, r in results.items()}
    print(busy_note(results, own))
    write_json(args.json, {"machine": machine, "results": results})


if __name__ == "__main__":
    main_guard(main)
