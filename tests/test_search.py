"""scripts/search.py: Optuna trials over the cached frozen trunk of the tiny model on the real data, pruned, shared
between processes, resumed after a kill, and refusing bad input in one line. One search is shared by several tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_operating_point import PIPELINE_LABELS

optuna = pytest.importorskip("optuna")

from search import main as search_main  # noqa: E402 - scripts/, once Optuna is known to be there

from hf_spam.errors import HfSpamError  # noqa: E402

# The tiny model, its last block trained over cached features, on a few hundred real messages.
SMALL = ["--config", "configs/tiny.yaml", "--trainable_layers", "last_block", "--pooling", "last_non_pad",
         "--padding", "dynamic", "--max_train_samples", "160", "--max_eval_samples", "80", "--max_test_samples", "80",
         "--disable_tqdm", "true", "--cpu_threads", "1"]  # one thread: a tiny model on a shared CPU
# Two frozen parts (two feature caches), a learning rate wide enough for the median pruner to stop some trials.
SPACE = """\
learning_rate: {low: 1.0e-5, high: 3.0e-2, log: true}
num_train_epochs: {low: 2, high: 3}
per_device_train_batch_size: {choices: [8, 16]}
trainable_layers: {choices: [last_block, last_two_blocks]}
"""


def start_search(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "search.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_search(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = start_search(args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def search(tmp_path_factory, sms_file) -> dict[str, Path]:
    """A 4-trial search (the median pruner active after the first complete trial), its features in a fresh cache."""
    base = tmp_path_factory.mktemp("search")
    (base / "space.yaml").write_text(SPACE)
    out, cache = base / "run", base / "cache"
    result = run_search([*SMALL, "--data_file", str(sms_file), "--output_dir", str(out), "--data_cache_dir",
                         str(cache), "--search_space", str(base / "space.yaml"), "--n_trials", "4",
                         "--pruner_startup_trials", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "cache": cache / "features", "base": base}


def test_search_trials_read_features_computed_once_and_are_pruned(search):
    out, data = search["out"], results(search["out"])
    rows = data["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    assert any(r["state"] == "pruned" for r in rows), rows  # pruning observed
    for r in rows:
        assert 0 <= r["validation_accuracy"] <= 1 and r["seconds"] > 0 and r["epochs"] >= 1
        assert r["trainable_layers"] in ("last_block", "last_two_blocks") and 1e-5 <= r["learning_rate"] <= 3e-2
    # Features built once per frozen part: 2 parts x 3 splits on disk, computed once each, read by every trial.
    assert len(list(search["cache"].glob("*.safetensors"))) == 6
    log = (out / "search.log").read_text()
    assert log.count("(computed: train, validation, test)") == 2
    assert log.count("features read from the cache") == 4
    assert (out / "best" / "train.log").read_text().count("(read from cache)") == 1  # the best run: no trunk pass
    # One table, three forms; the plots; no trial's folder left behind.
    assert (out / "results.md").read_text().count("\n| ") == 5 and len((out / "results.csv").read_text().split()) == 5
    assert (out / "optimization-history.png").stat().st_size > 1000
    complete = sum(r["state"] == "complete" for r in rows)
    assert (out / "param-importances.png").is_file() == (complete >= 2)
    if complete < 2:
        assert "Parameter importance not plotted: it needs at least 2 complete trials" in log
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".search.lock"]
    # The best trial trained again into a normal model folder, scored once on the test split, its card naming it.
    best = data["best_trial"]
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["validation_accuracy"] == pytest.approx(best["validation_accuracy"], abs=1e-6)
    assert "test_accuracy" in metrics and data["best_model"]["test_accuracy"] == metrics["test_accuracy"]
    card = (out / "best" / "README.md").read_text()
    assert "Chosen by a hyperparameter search" in card and f"Trial {best['number']} had the best" in card
    assert f"| `learning_rate` | {best['learning_rate']} |" in card


def test_best_model_loads_through_pipeline_without_hf_spam(search, tmp_path):
    texts = ["WINNER!! Claim your free prize now, text WIN to 80085", "See you at the station at 6?"]
    proc = subprocess.run([sys.executable, "-c", PIPELINE_LABELS, str(search["out"] / "best"), json.dumps(texts)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam_imported"] is False and set(got["labels"]) <= {"ham", "spam"} and len(got["labels"]) == 2


def test_resume_continues_a_killed_search_up_to_n_trials(search, tmp_path, sms_file):
    # The module's search killed during its fifth trial: study.db holds 4 finished trials and one left running.
    out = tmp_path / "run"
    out.mkdir()
    (out / "study.db").write_bytes((search["out"] / "study.db").read_bytes())
    optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}").ask()  # then the kill
    result = run_search([*SMALL, "--data_file", str(sms_file), "--output_dir", str(out), "--data_cache_dir",
                         str(search["cache"].parent), "--search_space", str(search["base"] / "space.yaml"),
                         "--n_trials", "5", "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = results(out)["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2, 3, 4, 5]  # one more trial: 5 finished in all
    assert rows[4]["state"] == "fail" and rows[5]["state"] in ("complete", "pruned")
    assert rows[:4] == results(search["out"])["trials"]
    log = (out / "search.log").read_text()
    assert "Trial 4 was left running by a stopped search: marked failed" in log
    assert "computed:" not in log  # the features of the first search, read
    assert (out / "best" / "config.json").is_file()


def test_two_processes_share_one_study(tmp_path, sms_file):
    (tmp_path / "space.yaml").write_text("learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    out, db = tmp_path / "run", tmp_path / "study.db"
    args = [*SMALL, "--data_file", str(sms_file), "--output_dir", str(out), "--data_cache_dir", str(tmp_path / "c"),
            "--search_space", str(tmp_path / "space.yaml"), "--num_train_epochs", "1", "--n_trials", "2",
            "--storage", f"sqlite:///{db}", "--study_name", "shared"]
    procs = [start_search(args) for _ in range(2)]  # started at once
    ended = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[1][-2000:] for e in ended]
    rows = results(out)["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2, 3] and {r["state"] for r in rows} == {"complete"}
    assert len({r["learning_rate"] for r in rows}) == 4  # the two processes sampled different trials
    log = (out / "search.log").read_text()
    assert log.count("Study 'shared' (new") == 1 and log.count("Study 'shared' (joined") == 1
    assert log.count("(computed: train, validation, test)") == 1  # one process computed, the other waited and read
    assert log.count("training it again into") == 1  # best/ written once, by the process that finished last
    assert (out / "best" / "config.json").is_file()


@pytest.mark.parametrize("space, flags, message", [
    ("learning_rate: {low: 1.0e-5, high: 1.0e-3}\nbatch: {choices: [8]}\n", [],
     "unknown parameter 'batch'; expected some of learning_rate"),
    ("learning_rate: {low: 1.0e-3, high: 1.0e-5, log: true}\n", [],
     "learning_rate: empty range (low 0.001 >= high 1e-05)"),
    ("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n", ["--metric", "validation_speed"],
     "--metric validation_speed: unknown; expected one of validation_accuracy"),
    ("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n", ["--storage", "sqlite:////no/such/folder/study.db"],
     "--storage sqlite:////no/such/folder/study.db: cannot be opened"),
    ("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n", ["--storage", "nosuchdb://somewhere/x"],
     "--storage nosuchdb://somewhere/x: cannot be opened"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, space, flags, message):
    (tmp_path / "space.yaml").write_text(space)
    out = tmp_path / "run"
    with pytest.raises(HfSpamError) as err:
        search_main([*SMALL, "--output_dir", str(out), "--search_space", str(tmp_path / "space.yaml"), *flags])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()  # nothing written, no study started


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "space.yaml").write_text("learning_rate: {low: 1.0e-5, high: 1.0e-3}\nwarmup: {low: 0, high: 1}\n")
    started = time.time()
    result = run_search([*SMALL, "--output_dir", str(tmp_path / "run"), "--search_space", str(tmp_path / "space.yaml")],
                        timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'space.yaml'}: unknown parameter 'warmup'; expected "
                                          "some of learning_rate, num_train_epochs, per_device_train_batch_size, "
                                          "weight_decay, warmup_ratio, trainable_layers"]
    assert time.time() - started < 120 and not (tmp_path / "run").exists()


def test_joining_a_study_of_another_metric_is_refused(tmp_path):
    (tmp_path / "space.yaml").write_text("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="sms", direction="minimize").set_user_attr("metric",
                                                                                            "validation_log_loss")
    with pytest.raises(HfSpamError, match="study 'sms' searches validation_log_loss; use that, or another"):
        search_main([*SMALL, "--output_dir", str(tmp_path / "run"), "--search_space", str(tmp_path / "space.yaml"),
                     "--storage", url, "--study_name", "sms"])
    assert not (tmp_path / "run").exists()


def test_without_optuna_the_search_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # an environment without the `search` extra
    with pytest.raises(HfSpamError, match=r"^the search needs Optuna: pip install 'hf-spam\[search\]'$"):
        search_main([*SMALL, "--output_dir", str(tmp_path / "run")])


def test_the_default_space_file_holds_the_issues_parameters():
    from search import DEFAULT_SPACE, load_space

    space = load_space(DEFAULT_SPACE)
    assert set(space) == {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "weight_decay",
                          "warmup_ratio"}
    assert space["learning_rate"].log
