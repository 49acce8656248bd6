"""A push that succeeds, end to end, against tests/fake_hub.py on 127.0.0.1: a LoRA training run pushes its folder
(the merged model and ``adapter/``) at the end to a private repository's branch, and ``scripts/push_to_hub.py``
pushes the same folder to a public repository's ``main``. What arrives is checked byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_train
from fake_hub import FakeHub

from hf_spam.errors import HfSpamError
from hf_spam.hub import check_model_folder

pytestmark = pytest.mark.slow

TOKEN = "hf_PushTestToken0123456789abcdefXYZ"
PRIVATE, PUBLIC, BRANCH = "me/gpt-spam-lora", "me/gpt-spam-public", "experiment"


def hub_env(fake: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": ""}


def folder_files(folder: Path) -> dict[str, bytes]:
    """What a push of ``folder`` must upload: every file but the log (Trainer checkpoints and hidden files: none)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != "train.log"}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, sms_file) -> dict:
    """One LoRA run pushed at its end (private, branch ``experiment``, --hub_token), then its folder pushed again
    with the push script (public, ``main``, HF_TOKEN)."""
    out = tmp_path_factory.mktemp("lora_push")
    with FakeHub() as fake:
        train = run_train(["--config", "configs/tiny.yaml", "--trainable_layers", "lora", "--data_file", str(sms_file),
                           "--output_dir", str(out), "--max_train_samples", "32", "--max_steps", "2",
                           "--max_eval_samples", "8", "--max_test_samples", "16", "--eval_strategy", "no",
                           "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", PRIVATE,
                           "--hub_private_repo", "true", "--hub_revision", BRANCH, "--hub_token", TOKEN],
                          env=hub_env(fake), timeout=300)
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
        first = len(fake.requests)
        script = subprocess.run([sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), str(out), "--repo_id",
                                 PUBLIC], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, **hub_env(fake), "HF_TOKEN": TOKEN})
        assert script.returncode == 0, script.stderr[-3000:]
    return {"folder": out, "fake": fake, "train": train, "script": script, "first": first}


def test_the_run_creates_a_private_repository_and_its_branch(pushed: dict):
    fake = pushed["fake"]
    repo = fake.repos[PRIVATE]
    assert repo.visibility == "private" and set(repo.branches) == {"main", BRANCH}
    assert repo.branches["main"] == {}  # nothing went to main: only the requested revision
    assert [(c["repo_id"], c["revision"]) for c in fake.commits] == [(PRIVATE, BRANCH), (PUBLIC, "main")]
    assert fake.repos[PUBLIC].visibility == "public" and set(fake.repos[PUBLIC].branches) == {"main"}
    assert f"Pushed to {fake.url}/{PRIVATE}" in (pushed["folder"] / "train.log").read_text()
    assert pushed["script"].stdout.strip() == f"{fake.url}/{PUBLIC}"
    # only the faked endpoints were called, each answered 2xx (409 only for "the repo exists")
    paths = [r.path.split("?")[0] for r in fake.requests]
    assert set(paths) == {"/api/repos/create", f"/api/models/{PRIVATE}/branch/{BRANCH}", "/api/validate-yaml",
                          f"/api/models/{PRIVATE}/preupload/{BRANCH}", f"/api/models/{PRIVATE}/commit/{BRANCH}",
                          f"/api/models/{PUBLIC}/preupload/main", f"/api/models/{PUBLIC}/commit/main"}


def test_exactly_the_folders_files_arrive(pushed: dict):
    expected = folder_files(pushed["folder"])
    assert {"model.safetensors", "config.json", "README.md", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json", "adapter/base/model.safetensors"} <= set(expected)
    for repo_id, revision in ((PRIVATE, BRANCH), (PUBLIC, "main")):
        arrived = pushed["fake"].repos[repo_id].branches[revision]
        assert sorted(arrived) == sorted(expected), repo_id
        for path, data in expected.items():
            assert arrived[path] == data, path


def test_the_pushed_adapter_loads_with_peft(pushed: dict, tmp_path: Path):
    """The adapter as it arrived (adapter/ and adapter/base/ of the repository) gives the merged model's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    for path, data in pushed["fake"].repos[PRIVATE].branches[BRANCH].items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter" / "base", trust_remote_code=True)
    adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    ids = torch.tensor([[464, 2068, 7586, 21831, 50256]])
    with torch.no_grad():
        assert torch.allclose(adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_the_card_front_matter_is_what_the_hub_reads(pushed: dict):
    fake = pushed["fake"]
    readme = fake.repos[PRIVATE].branches[BRANCH]["README.md"].decode()
    shown = [json.loads(r.body)["content"] for r in fake.requests if r.path == "/api/validate-yaml"]
    assert shown and set(shown) == {readme}  # the client had the Hub validate the very card it committed
    assert readme.startswith("---\n")
    meta = yaml.safe_load(readme.split("---\n", 2)[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # random weights: no base model to link
    metrics = json.loads((pushed["folder"] / "metrics.json").read_text())
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_the_token_is_only_in_the_authorization_header(pushed: dict):
    requests = pushed["fake"].requests
    assert len(requests) > pushed["first"] > 0
    for request in requests:
        assert request.headers.get("authorization") == f"Bearer {TOKEN}", request.path
        others = {k: v for k, v in request.headers.items() if k != "authorization"}
        assert TOKEN not in request.path and TOKEN not in json.dumps(others), request.path
        assert TOKEN.encode() not in request.body, request.path
    for out in (pushed["train"].stdout, pushed["train"].stderr, pushed["script"].stdout, pushed["script"].stderr):
        assert TOKEN not in out
    assert all(TOKEN.encode() not in data for data in folder_files(pushed["folder"]).values())


def test_an_adapter_folder_alone_is_refused_with_the_way_out(pushed: dict):
    with pytest.raises(HfSpamError, match=r"adapter: a LoRA adapter folder; push the run's folder"):
        check_model_folder(pushed["folder"] / "adapter")
