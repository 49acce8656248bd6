"""The arithmetic a model runs in (#21): ``auto``'s choice from CPU flags, int8 and bfloat16 against float32 on a
trained model, the commands' ``--dtype``, the server's ``/info``, and ``--bf16`` training on a CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_train
from test_deploy import HF_SPAM, Server
from test_predict import TEXTS, native_gpt2_folder

from hf_spam.arguments import parse_args
from hf_spam.arithmetic import (
    KNOWN_FLAGS,
    NATIVE_BF16_FLAGS,
    choose_dtype,
    cpu_flags,
    int8_engine,
    native_bf16,
    quantize_int8,
)
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError
from hf_spam.predict import SpamClassifier

XEON_NO_BF16 = {"fpu", "sse4_2", "avx2", "avx512f", "avx512bw", "avx512_vnni"}  # vnni: int8 dot products, no bf16


@pytest.mark.parametrize("flags, expected", [
    (set(), "float32"),
    (XEON_NO_BF16, "float32"),
    (XEON_NO_BF16 | {"avx512_bf16"}, "bfloat16"),  # e.g. AMD Zen 4, Intel Cooper Lake
    (XEON_NO_BF16 | {"amx_bf16", "amx_tile"}, "bfloat16"),  # Intel Sapphire Rapids and later
])
def test_auto_chooses_bfloat16_only_where_the_cpu_has_native_bf16(flags, expected):
    chosen = choose_dtype("auto", "cpu", flags)
    assert chosen.dtype == expected and chosen.requested == "auto"
    assert all(f in chosen.reason for f in sorted(flags & set(NATIVE_BF16_FLAGS)))
    assert chosen.info() == {"dtype": expected, "dtype_requested": "auto", "dtype_reason": chosen.reason}


def test_an_asked_dtype_is_kept_and_int8_is_never_chosen_by_auto():
    for asked, expected in [(None, "float32"), ("float32", "float32"), ("fp32", "float32"), ("bf16", "bfloat16"),
                            ("bfloat16", "bfloat16"), ("int8", "int8")]:
        assert choose_dtype(asked, "cpu", set()).dtype == expected
    assert choose_dtype("auto", "cpu", {"avx512_vnni", "amx_int8"}).dtype == "float32"


@pytest.mark.parametrize("flags, expected", [
    (set(), None),  # None: PyTorch's default engine (x86 on x86 machines: FBGEMM's kernels)
    (XEON_NO_BF16, None),  # VNNI without AMX (e.g. AMD Zen 4): FBGEMM's VNNI kernels
    (XEON_NO_BF16 | {"avx512_bf16"}, None),
    (XEON_NO_BF16 | {"amx_bf16", "amx_int8", "amx_tile"}, "onednn"),  # AMX tiles: oneDNN's kernels
])
def test_int8s_engine_is_chosen_from_the_cpu_flags(flags, expected):
    expected = expected or torch.backends.quantized.engine
    chosen = choose_dtype("int8", "cpu", flags)
    assert (chosen.dtype, chosen.engine) == ("int8", expected)
    assert chosen.reason == f"asked for; {int8_engine(flags)[1]}"
    assert ("the CPU has amx_int8" in chosen.reason) == (expected == "onednn")
    assert chosen.info()["dtype_engine"] == expected
    assert "dtype_engine" not in choose_dtype("bfloat16", "cpu", flags).info()


def test_impossible_dtypes_are_refused_in_one_line():
    with pytest.raises(HfSpamError, match=r"^--dtype int8: PyTorch's dynamic int8 quantisation runs on the CPU, not "
                       "cuda; use --device cpu"):
        choose_dtype("int8", torch.device("cuda"))
    with pytest.raises(HfSpamError, match="not mps"):
        choose_dtype("int8", "mps")
    with pytest.raises(HfSpamError, match="float16 needs a GPU"):
        choose_dtype("float16", "cpu")
    with pytest.raises(HfSpamError, match=r"^--dtype int4: unknown; expected one of auto, float32, bfloat16, int8$"):
        choose_dtype("int4", "cpu")


def test_cpu_flags_are_pytorchs_own_detection():
    flags = cpu_flags()
    assert flags <= set(KNOWN_FLAGS)
    assert ("avx512_bf16" in flags) == torch.cpu._is_avx512_bf16_supported()
    assert ("amx_bf16" in flags) == ("amx_int8" in flags) == torch.cpu._is_amx_tile_supported()
    cpuinfo = Path("/proc/cpuinfo")  # where Linux lists them too: the two must agree
    if cpuinfo.is_file():
        listed = {w for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for w in line.split()}
        assert flags == listed & set(KNOWN_FLAGS)
    assert native_bf16("cpu", {"fpu", "avx512f", "amx_bf16", "avx512_vnni"}) == (True, "the CPU has amx_bf16")


@pytest.fixture(scope="module")
def test_split(sms_file) -> list[str]:
    return list(load_sms_spam(sms_file)["test"]["text"])


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_int8_and_bf16_agree_with_float32_on_the_test_split(tiny_run, test_split, dtype):
    float32 = SpamClassifier.from_pretrained(tiny_run, device="cpu")
    other = SpamClassifier.from_pretrained(tiny_run, device="cpu", dtype=dtype)
    assert other.arithmetic.dtype == dtype and float32.arithmetic.dtype == "float32"
    ids = float32.encode(test_split)
    a, b = float32.logits_of(ids, 64), other.logits_of(ids, 64)
    assert b.dtype == torch.float32  # probabilities come back in float32 whatever the arithmetic
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    change = (a.softmax(-1) - b.softmax(-1)).abs().max().item()
    print(f"{dtype}: labels equal to float32's on {agree:.2%} of {len(ids)} test texts; largest probability "
          f"change {change:.4f}")
    assert agree >= 0.98, agree
    assert 0 < change < 0.5  # the arithmetic really changed (the labels above: not by much)
    if dtype == "int8":  # every Linear layer quantised: a quarter of their bytes
        linears = [m for m in other.model.modules() if type(m).__name__ == "Linear"]
        assert linears and all(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in linears)
        assert other.model_bytes < float32.model_bytes
    else:
        assert {p.dtype for p in other.model.parameters()} == {torch.bfloat16}
        assert other.model_bytes * 2 == float32.model_bytes


@pytest.mark.parametrize("engine", ["x86", "onednn"])
def test_int8_agrees_with_float32_with_either_engine(tiny_run, test_split, engine):
    """Whichever engine ``int8_engine`` picks on this machine, both are held to the same agreement."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this torch has no {engine} quantized engine")
    float32, int8 = (SpamClassifier.from_pretrained(tiny_run, device="cpu") for _ in range(2))
    default = torch.backends.quantized.engine
    quantize_int8(int8.model, engine)  # in place: the classifier now runs the int8 layers
    assert torch.backends.quantized.engine == default  # the global setting is restored
    ids = float32.encode(test_split)
    a, b = float32.logits_of(ids, 64), int8.logits_of(ids, 64)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"int8 ({engine}): labels equal to float32's on {agree:.2%} of {len(ids)} test texts; largest probability "
          f"change {(a.softmax(-1) - b.softmax(-1)).abs().max().item():.4f}")
    assert agree >= 0.98 and 0 < (a - b).abs().max() < 2


def test_int8_covers_a_native_gpt2_folders_conv1d_layers(tmp_path):
    folder = native_gpt2_folder(tmp_path / "native")
    float32 = SpamClassifier.from_pretrained(folder, device="cpu")
    int8 = SpamClassifier.from_pretrained(folder, dtype="int8")  # no device given: int8 runs on the CPU
    assert not [m for m in int8.model.modules() if type(m).__name__ in ("Conv1D", "Linear")
                and not type(m).__module__.startswith("torch.ao.nn.quantized")]
    texts = [t for t in TEXTS if t]
    a, b = (clf.logits_of(clf.encode(texts)) for clf in (float32, int8))
    assert (a.argmax(-1) == b.argmax(-1)).all() and 0 < (a - b).abs().max() < 0.5


def test_cli_predict_with_int8_writes_the_predictions_and_notes_the_arithmetic(tiny_run):
    texts = ["WINNER!! You have been selected to receive a £900 prize reward! Call 09061701461", "See you at 6?"]
    result = subprocess.run([HF_SPAM, "predict", "--model", str(tiny_run), "--dtype", "int8", *texts],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"note: arithmetic int8 (--dtype int8: {choose_dtype('int8').reason})\n"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = SpamClassifier.from_pretrained(tiny_run, dtype="int8").predict(texts)
    assert [r["text"] for r in records] == texts and [r["label"] for r in records] == [r["label"] for r in expected]
    for got, want in zip(records, expected):
        assert got["spam_probability"] == pytest.approx(want["spam_probability"], abs=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_cli_evaluate_with_a_dtype_prints_float32_beside_it(tiny_run, sms_file, tmp_path, dtype):
    result = subprocess.run([HF_SPAM, "evaluate", "--model", str(tiny_run), "--data_file", str(sms_file), "--dtype",
                             dtype, "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[lines.index(next(x for x in lines if x.startswith(
        "Arithmetic on the test split (300 rows)"))) + 2:][:2]}
    saved = json.loads((tmp_path / "arithmetic.json").read_text())
    assert list(rows) == ["float32", dtype] == list(saved["scores"])
    for name, (accuracy, f1) in rows.items():
        assert accuracy == f"{saved['scores'][name]['accuracy'] * 100:.2f}%"
        assert f1 == f"{saved['scores'][name]['f1']:.4f}"
    assert saved["examples"] == 300 and saved["agreement"] >= 0.98
    assert f"{dtype} vs float32: the same label for {saved['same_label']} of 300 texts" in result.stdout
    assert f"largest change in a probability {saved['max_probability_change']:.4f}" in result.stdout
    report = json.loads((tmp_path / "eval_metrics.json").read_text())  # the report above: the asked arithmetic's
    assert report["accuracy"] == pytest.approx(saved["scores"][dtype]["accuracy"])


def test_cli_refuses_dtype_flags_that_would_do_nothing(tiny_run):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([HF_SPAM, *args], capture_output=True, text=True, timeout=300)

    onnx = run("serve", "--model", str(tiny_run), "--backend", "onnx", "--onnx_file", str(tiny_run / "config.json"),
               "--dtype", "int8")
    assert onnx.returncode == 2 and onnx.stderr.startswith("error: serve: --dtype/--bf16 apply to --backend torch")
    both = run("predict", "--model", str(tiny_run), "--bf16", "--dtype", "int8", "hello")
    assert both.returncode == 2 and both.stderr == ("error: --bf16 is --dtype bfloat16, and --dtype int8 was given "
                                                    "too; give one\n")
    unknown = run("predict", "--model", str(tiny_run), "--dtype", "int4", "hello")
    assert unknown.returncode == 2 and "invalid choice: 'int4'" in unknown.stderr


@pytest.mark.parametrize("dtype", ["int8", "auto"])
def test_server_info_reports_the_arithmetic(tiny_run, dtype):
    srv = Server(tiny_run, "--dtype", dtype)
    try:
        status, info = srv.get("/info")
        assert status == 200 and info["backend"] == "torch"
        expected = choose_dtype(dtype, "cpu")
        assert (info["dtype"], info["dtype_requested"], info["dtype_reason"], info.get("dtype_engine")) == (
            expected.dtype, dtype, expected.reason, expected.engine)
        status, answer = srv.predict({"inputs": "WINNER!! Call now to claim your prize"})
        assert status == 200 and answer[0]["label"] in ("ham", "spam")
    finally:
        srv.stop()


def test_bf16_on_a_cpu_needs_no_use_cpu_flag(tmp_path):
    if getattr(torch, "accelerator", torch.cuda).is_available():
        pytest.skip("an accelerator is visible: --bf16 runs there")
    _, _, args = parse_args(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), "--bf16", "true"])
    assert args.use_cpu and args.use_cpu_for_bf16 and args.device.type == "cpu"


@pytest.mark.slow
def test_bf16_training_on_a_cpu_logs_the_trunks_arithmetic(sms_file, tmp_path):
    """A short tiny run with the frozen-trunk cache, --bf16 true and no --use_cpu."""
    if getattr(torch, "accelerator", torch.cuda).is_available():
        pytest.skip("an accelerator is visible: --bf16 runs there")
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir",
                        str(tmp_path / "run"), "--trainable_layers", "last_block", "--max_steps", "4",
                        "--eval_strategy", "no", "--bf16", "true", "--feature_cache_dir", str(tmp_path / "cache")])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    native, why = native_bf16("cpu")
    assert f"--bf16 on the CPU (--use_cpu true set, since there is no GPU): {why}" in log
    assert f"run once per example in bfloat16 autocast ({why}" in log
    assert ("emulated" in log) != native
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_examples"] == 300
