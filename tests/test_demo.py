"""``hf-spam demo`` (a real server, its API through gradio_client, its page in a real headless Chromium) and
``hf-spam space`` (the written Space's app.py, run without hf_spam, answers like the model)."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from conftest import scaled_tiny_model  # noqa: E402
from demo_screenshot import ask_in_browser, free_port  # noqa: E402 - scripts/, on the path through conftest
from gradio_client import Client, handle_file  # noqa: E402
from huggingface_hub import SpaceCard  # noqa: E402

from hf_spam import GPTSpamConfig  # noqa: E402
from hf_spam.cli import main as cli_main  # noqa: E402
from hf_spam.hub import save_model_folder  # noqa: E402
from hf_spam.model_card import WIDGET  # noqa: E402
from hf_spam.predict import SpamClassifier  # noqa: E402

HF_SPAM = str(Path(sys.executable).with_name("hf-spam"))
SPAM = "WINNER!! You have been selected for a FREE holiday. Call 09061701461 now to claim your prize!"
TEXTS = [example["text"] for example in WIDGET] + [SPAM, 'a "quoted", comma, text', "ok"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, bpe_dir) -> Path:
    return save_model_folder(scaled_tiny_model(seed=5), tmp_path_factory.mktemp("demo") / "sms-model", bpe_dir=bpe_dir)


@pytest.fixture(scope="module")
def classifier(folder) -> SpamClassifier:
    return SpamClassifier.from_pretrained(folder, device="cpu")


def wait_for(url: str, proc: subprocess.Popen) -> None:
    """Until ``url`` answers (the process must stay up)."""
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture(scope="module")
def demo_url(folder):
    """``hf-spam demo`` on the model folder, in a subprocess on a free port of 127.0.0.1."""
    port = free_port()
    proc = subprocess.Popen([HF_SPAM, "demo", "--model", str(folder), "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def assert_answer(got: dict, want: dict, tolerance: float = 1e-5) -> None:
    """A gr.Label value (``label`` and ``confidences``) is SpamClassifier's label and probabilities."""
    assert got["label"] == want["label"]
    assert {c["label"]: c["confidence"] for c in got["confidences"]} == pytest.approx(want["probabilities"],
                                                                                      abs=tolerance)


def test_the_demo_api_answers_like_the_model(demo_url, classifier):
    client = Client(demo_url, verbose=False)
    expected = classifier.predict_labels(TEXTS)
    assert len({round(r["probabilities"]["spam"], 4) for r in expected}) > 2  # the texts' answers differ
    for text, want in zip(TEXTS, expected):
        assert_answer(client.predict(text, api_name="/classify"), want)
    with pytest.raises(Exception, match="Type a message first"):
        client.predict("   ", api_name="/classify")


def read_csv(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def assert_predictions(rows: list[dict], texts: list[str], classifier: SpamClassifier,
                       tolerance: float = 1e-5) -> None:
    """A predictions CSV: each text, its label and every label's probability, as SpamClassifier gives them."""
    expected = classifier.predict_labels(texts)
    assert [row["text"] for row in rows] == texts
    assert [row["label"] for row in rows] == [r["label"] for r in expected]
    assert list(rows[0]) == ["text", "label", *(f"probability_{name}" for name in classifier.names)]
    for row, want in zip(rows, expected):
        assert {name: float(row[f"probability_{name}"]) for name in classifier.names} == pytest.approx(
            want["probabilities"], abs=tolerance)


def test_the_file_tab_turns_txt_and_csv_files_into_predictions(demo_url, classifier, tmp_path):
    client = Client(demo_url, verbose=False)
    txt = tmp_path / "messages.txt"
    txt.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert_predictions(read_csv(client.predict(handle_file(str(txt)), api_name="/classify_file")), TEXTS, classifier)
    table = tmp_path / "inbox.csv"
    with table.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "Text"], *[[i, text] for i, text in enumerate(TEXTS + ["two\nlines"])]])
    assert_predictions(read_csv(client.predict(handle_file(str(table)), api_name="/classify_file")),
                       TEXTS + ["two\nlines"], classifier)
    # Many messages: the progress bar reports its steps while the file is classified.
    many = tmp_path / "many.txt"
    many.write_text("\n".join(TEXTS * 600), encoding="utf-8")
    job, progress = client.submit(handle_file(str(many)), api_name="/classify_file"), []
    while not job.done():
        progress += job.status().progress_data or []
        time.sleep(0.005)
    assert len(read_csv(job.result())) == len(TEXTS) * 600
    assert progress and all(unit.desc == "Classifying" and unit.length == -(-len(TEXTS) * 600 // 16)
                            for unit in progress)
    bad = tmp_path / "no-text.csv"
    bad.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"no-text\.csv: no text column \(columns: id, body\)"):
        client.predict(handle_file(str(bad)), api_name="/classify_file")


def test_the_page_in_a_real_browser_shows_the_models_label(demo_url, classifier, tmp_path):
    shot = tmp_path / "demo.png"
    seen = ask_in_browser(demo_url, SPAM, str(shot))
    want = classifier.predict_labels([SPAM])[0]
    assert seen["label"] == want["label"] and seen["confidences"] == pytest.approx(want["probabilities"], abs=1e-6)
    assert seen["examples"] == [example["text"] for example in WIDGET]  # the card's examples fill the box
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_without_gradio_is_one_line_naming_the_extra(folder, tmp_path):
    blocker = tmp_path / "sitecustomize.py"  # gradio is not installed, as far as this process can tell
    blocker.write_text("import sys\nsys.modules['gradio'] = None\n", encoding="utf-8")
    for args in (["demo", "--model", str(folder)], ["space", "--model", "someone/sms-spam", "--output", "x"]):
        proc = subprocess.run([HF_SPAM, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert proc.returncode == 3 and proc.stderr.strip().splitlines() == [
            'error: gradio is not installed; this command needs the demo extra: pip install "hf-spam[demo]"']


def cache_config(hf_home: Path, repo_id: str, config: dict) -> None:
    """``repo_id``'s config.json in the Hugging Face cache at ``hf_home`` (the layout huggingface_hub reads)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40, encoding="utf-8")
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config), encoding="utf-8")


def space_command(args: list[str], hf_home: Path | None, capsys) -> tuple[int, str, str]:
    """``hf-spam space ARGS``: in a subprocess reading the Hub cache ``hf_home``, else in this process."""
    if hf_home:
        proc = subprocess.run([HF_SPAM, "space", *args], env={**os.environ, "HF_HOME": str(hf_home)},
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    try:
        cli_main(["space", *args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    said = capsys.readouterr()
    return code, said.out, said.err


def test_space_writes_a_gradio_space_and_reads_native_or_remote_code_from_the_config(tmp_path, capsys):
    import gradio

    hub = tmp_path / "hf_home"  # a Hub cache holding two models' config.json, read offline
    cache_config(hub, "someone/native-spam", {"model_type": "gpt2"})
    cache_config(hub, "someone/hf-spam", {"model_type": GPTSpamConfig.model_type})
    cases = {"someone/native-spam": (hub, [], False), "someone/hf-spam": (hub, [], True),
             "someone/offline": (None, [], True), "someone/offline-native": (None, ["--native"], False)}
    for model, (cache, flags, remote) in cases.items():
        out = tmp_path / model.split("/")[1]
        code, stdout, stderr = space_command(["--model", model, "--output", str(out), *flags], cache, capsys)
        assert code == 0 and f"Wrote a Gradio Space to {out}" in stdout, stderr
        assert ("note: could not read someone/offline's config.json" in stderr) == (model == "someone/offline")
        card = SpaceCard.load(out / "README.md").data
        assert (card.sdk, card.sdk_version, card.app_file, card.models) == ("gradio", gradio.__version__, "app.py",
                                                                            [model])
        assert card.title == f"SMS spam classifier: {model.split('/')[1]}"
        app = ast.parse((out / "app.py").read_text(encoding="utf-8"))
        settings = {node.targets[0].id: ast.literal_eval(node.value) for node in app.body
                    if isinstance(node, ast.Assign) and node.targets[0].id.isupper() and node.targets[0].id != "BATCH"}
        assert settings == {"MODEL": model, "TRUST_REMOTE_CODE": remote, "TITLE": card.title,
                            "EXAMPLES": [example["text"] for example in WIDGET]}
        requirements = (out / "requirements.txt").read_text(encoding="utf-8").split()
        assert [re.split("[<>=]", r)[0] for r in requirements] == ["torch", "transformers", "gradio"]
        assert f"gradio=={gradio.__version__}" in requirements
    for cache, args, message in (
        (hub, ["--model", "someone/native-spam", "--remote_code"], "error: --remote_code: someone/native-spam's "
         "config.json has model_type 'gpt2', which does not need remote code"),
        (None, ["--model", str(tmp_path)], "not a Hub model id; a Space loads its model from the Hub"),
    ):
        code, _, stderr = space_command([*args, "--output", str(tmp_path / "refused")], cache, capsys)
        assert code == 2 and message in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "refused").exists()


SPACE_RUNNER = textwrap.dedent(
    """
    import importlib.util, json, os, sys

    class NotInstalled:  # hf_spam is not installed on a Space
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_spam":
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NotInstalled())
    for n, (space, model, port) in enumerate(json.loads(sys.argv[1])):  # each Space's app.py, on its model
        spec = importlib.util.spec_from_file_location(f"app{n}", os.path.join(space, "app.py"))
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        os.environ["MODEL_ID"] = model  # the Space variable that overrides the model
        demo = app.space_demo()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    print(json.dumps({"hf_spam": any(n.split(".")[0] == "hf_spam" for n in sys.modules)}), flush=True)
    demo.block_thread()
    """
)


def test_the_spaces_app_runs_without_hf_spam_and_answers_like_the_model(folder, classifier, tmp_path, capsys):
    """A Space for the hf-spam folder (remote code) and one for its native export, each run on the folder."""
    native = tmp_path / "native"
    cli_main(["export", "--model", str(folder), "--format", "transformers", "--output", str(native)])
    runs = []
    for kind, model in (("remote_code", folder), ("native", native)):
        cli_main(["space", "--model", f"someone/sms-spam-{kind}", "--output", str(tmp_path / kind), f"--{kind}"])
        runs.append((str(tmp_path / kind), str(model), free_port()))
    capsys.readouterr()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-c", SPACE_RUNNER, json.dumps(runs)], cwd=tmp_path, text=True,
                            env={**env, "HF_HOME": str(tmp_path / "hf_home")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline() or "null") == {"hf_spam": False}, proc.stderr.read()[-3000:]
        txt = tmp_path / "messages.txt"
        txt.write_text("\n".join(TEXTS), encoding="utf-8")
        for (_, _, port), tolerance in zip(runs, (1e-5, 1e-4)):  # the native export: within its check's 1e-4
            client = Client(f"http://127.0.0.1:{port}", verbose=False)
            for text, want in zip(TEXTS, classifier.predict_labels(TEXTS)):
                assert_answer(client.predict(text, api_name="/classify"), want, tolerance)
            assert_predictions(read_csv(client.predict(handle_file(str(txt)), api_name="/classify_file")), TEXTS,
                               classifier, tolerance)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
