"""The SMS Spam Collection: the chapter's split facts on the real file, file validation, CSVs, download."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import datasets
import pandas as pd
import pytest

from hf_spam.cli import main as cli_main
from hf_spam.data import LABEL_NAMES, SMS_SHA256, download_sms_spam, load_sms_spam, read_sms_file, write_splits_csv
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.files import cache_dir
from hf_spam.tokenization import encode_texts, get_encoding

FIRST_TRAIN = [
    ("Dude how do you like the buff wind.", 0),
    (
        "Tessy..pls do me a favor. Pls convey my birthday wishes to Nimya..pls dnt forget it. "
        "Today is her birthday Shijas",
        0,
    ),
    (
        "Reminder: You have not downloaded the content you have already paid for. "
        "Goto http://doit. mymoby. tv/ to collect your content.",
        1,
    ),
]


@pytest.fixture(scope="module")
def balanced(sms_file) -> datasets.DatasetDict:
    return load_sms_spam(sms_file)


@pytest.fixture(scope="module")
def natural(sms_file) -> datasets.DatasetDict:
    return load_sms_spam(sms_file, balanced=False)


def _pandas_read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])


def _chapter_splits(path: Path) -> list[pd.DataFrame]:
    """The book's own pandas code (create_balanced_dataset + random_split), written out independently."""
    df = _pandas_read(path)
    num_spam = df[df["Label"] == "spam"].shape[0]
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced_df = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    balanced_df["Label"] = balanced_df["Label"].map({"ham": 0, "spam": 1})
    balanced_df = balanced_df.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(balanced_df) * 0.7)
    validation_end = train_end + int(len(balanced_df) * 0.1)
    return [balanced_df[:train_end], balanced_df[train_end:validation_end], balanced_df[validation_end:]]


# --- the real file ---------------------------------------------------------------------------------


def test_read_equals_pandas_on_real_file(sms_file):
    df = read_sms_file(sms_file)
    pd.testing.assert_frame_equal(df, _pandas_read(sms_file))
    assert len(df) == 5572
    assert df["Label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}


def test_balanced_splits_are_the_chapters(balanced, sms_file):
    assert {k: v.num_rows for k, v in balanced.items()} == {"train": 1045, "validation": 149, "test": 300}
    assert [(r["text"], r["label"]) for r in balanced["train"].select(range(3))] == FIRST_TRAIN
    for ds, ref in zip(balanced.values(), _chapter_splits(sms_file)):
        assert ds["text"] == ref["Text"].tolist()
        assert ds["label"] == ref["Label"].tolist()
    labels = [label for ds in balanced.values() for label in ds["label"]]
    assert labels.count(0) == labels.count(1) == 747


def test_features(balanced):
    for ds in balanced.values():
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == LABEL_NAMES == ["ham", "spam"]
        assert ds.features["text"] == datasets.Value("string")
        assert ds.column_names == ["text", "label"]


def test_longest_train_text_is_120_tokens(balanced, bpe_dir):
    lengths = [len(ids) for ids in encode_texts(balanced["train"]["text"], get_encoding(bpe_dir))]
    assert max(lengths) == 120


def test_natural_balance_is_stratified(natural, sms_file):
    sizes = {k: v.num_rows for k, v in natural.items()}
    assert sizes == {"train": 3899, "validation": 556, "test": 1117}
    assert sum(sizes.values()) == 5572
    for ds in natural.values():
        assert abs(sum(ds["label"]) / ds.num_rows - 747 / 5572) < 0.005
    # every message exactly once, and rows shuffled (not ham block then spam block)
    all_texts = sorted(t for ds in natural.values() for t in ds["text"])
    assert all_texts == sorted(_pandas_read(sms_file)["Text"])
    first = natural["train"]["label"][:50]
    assert 0 < sum(first) < 50


def test_splits_are_deterministic_and_seeded(balanced, natural, sms_file):
    again = load_sms_spam(sms_file)
    for split in balanced:
        assert again[split]["text"] == balanced[split]["text"]
        assert again[split]._fingerprint == balanced[split]._fingerprint
    assert load_sms_spam(sms_file, balanced=False)["test"]["text"] == natural["test"]["text"]
    other = load_sms_spam(sms_file, seed=124)
    assert other["train"]["text"] != balanced["train"]["text"]


def test_fraction_arguments_are_checked(sms_file):
    with pytest.raises(ValueError, match="train_frac"):
        load_sms_spam(sms_file, train_frac=0.9, validation_frac=0.1)


# --- messy files ------------------------------------------------------------------------------------


BAD_FILES = {
    "empty": (b"", ": no data rows"),
    "blank_lines_only": (b"\n\n\r\n", ": no data rows"),
    "header_only": (b"label\ttext\n", ": no data rows"),
    "invalid_utf8": (b"ham\tok\nspam\tfine\nham\tcaf\xe9 in latin-1\n", ":3: invalid UTF-8"),
    "one_column": (b"ham\tok\nspam\n", ":2: 1 tab-separated column"),
    "three_columns": (b"ham\tok\nspam\twin\tnow\n", ":2: 3 tab-separated column"),
    "label_case": (b"ham\tok\nHam\thi\n", ":2: label 'Ham'"),
    "label_space": (b"ham\tok\nspam \twin\n", ":2: label 'spam '"),
    "label_other_after_blank": (b"ham\tok\n\nspam\twin\nphish\tclick\n", ":4: label 'phish'"),
    "label_after_multiline": (b'ham\t"two\nlines"\nspam\tok\nfoo\tbar\n', ":4: label 'foo'"),
    "empty_text": (b"ham\tok\nspam\t\n", ":2: empty message text"),
    "quoted_empty_text": (b'ham\tok\nspam\t""\n', ":2: empty message text"),
    "blank_text": (b"ham\tok\nspam\t   \n", ":2: empty message text"),
    "unterminated_quote": (b'ham\tok\nspam\t"win now\nham\tlater\n', ":2: a quote opened on this line is never closed"),
    "unterminated_quote_at_eof": (b'ham\tok\nspam\t"win now', ":2: a quote opened on this line is never closed"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_name_file_and_line(tmp_path, case):
    content, fragment = BAD_FILES[case]
    path = tmp_path / f"{case}.tsv"
    path.write_bytes(content)
    with pytest.raises(HfSpamError) as info:
        read_sms_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}{fragment}"), msg
    assert "expected" in msg and "\n" not in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(HfSpamError, match="file not found") as info:
        read_sms_file(tmp_path / "nope.tsv")
    assert str(tmp_path / "nope.tsv") in str(info.value)
    with pytest.raises(HfSpamError, match="is a directory"):
        read_sms_file(tmp_path)
    with pytest.raises(HfSpamError, match="file not found"):
        load_sms_spam(tmp_path / "nope.tsv")


def test_header_blank_lines_bom_and_crlf_are_handled(tmp_path):
    with_header = tmp_path / "header.tsv"
    with_header.write_bytes(b"Label\tText\nham\thi there\nspam\tWIN now\n")
    assert read_sms_file(with_header).values.tolist() == [["ham", "hi there"], ["spam", "WIN now"]]
    messy = tmp_path / "messy.tsv"
    messy.write_bytes(b'\xef\xbb\xbfham\thi\r\n\r\nspam\t"quoted\r\ntwo lines"\r\n\nham\tok "really"\r\n\n')
    got = read_sms_file(messy)
    pd.testing.assert_frame_equal(got, _pandas_read(messy))
    assert len(got) == 3


def test_endoftext_and_long_messages_are_kept(tmp_path, bpe_dir):
    long_text = "free prize " * 1500  # far more than GPT-2's 1,024-token context
    path = tmp_path / "odd.tsv"
    path.write_text(f"ham\tsee you <|endoftext|> later\nspam\t{long_text}\n", encoding="utf-8")
    df = read_sms_file(path)
    assert df["Text"].tolist() == ["see you <|endoftext|> later", long_text]
    ids = encode_texts(df["Text"].tolist(), get_encoding(bpe_dir))
    assert 50256 not in ids[0]  # ordinary text, not the special token
    assert len(ids[1]) > 1024


def test_one_class_only_is_refused(tmp_path):
    path = tmp_path / "ham_only.tsv"
    path.write_text("ham\ta\nham\tb\n", encoding="utf-8")
    with pytest.raises(HfSpamError, match="no 'spam' rows"):
        load_sms_spam(path)


def test_tiny_file_is_refused(tmp_path):
    path = tmp_path / "tiny.tsv"
    path.write_text("ham\ta\nspam\tb\n", encoding="utf-8")
    with pytest.raises(HfSpamError, match="too few rows"):
        load_sms_spam(path)


# --- CSV files and the script ----------------------------------------------------------------------


def test_write_splits_csv_round_trip(balanced, tmp_path):
    out = tmp_path / "csv"
    paths = write_splits_csv(balanced, out)
    assert paths == {s: out / f"{s}.csv" for s in ("train", "validation", "test")}
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv", "validation.csv"]
    for split, path in paths.items():
        df = pd.read_csv(path)
        assert df.columns.tolist() == ["Label", "Text"]
        assert df["Label"].tolist() == balanced[split]["label"]
        assert df["Text"].tolist() == balanced[split]["text"]
    write_splits_csv(balanced, out)  # overwriting is fine and leaves no temp files
    assert len(list(out.iterdir())) == 3


def test_prepare_data_command(sms_file, tmp_path, capsys):
    cli_main(["prepare-data", "--data_file", str(sms_file), "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "train: 1045 rows" in out and "validation: 149 rows" in out and "test: 300 rows" in out
    assert len(pd.read_csv(tmp_path / "train.csv")) == 1045


def test_prepare_data_script_bad_file_exits_cleanly(root, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"ham\tok\nspam\twin\nmaybe\thuh\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--data_file", str(bad), "--output_dir", str(out)],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:3: label 'maybe'"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# --- download -----------------------------------------------------------------------------------


class _ZipServer:
    """127.0.0.1 HTTP server: ``routes`` maps a path to (status, body); every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                status, body = server.routes.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def zip_server():
    srv = _ZipServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


def _zip_bytes(member: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("SMSSpamCollection", member)
        zf.writestr("readme", b"SMS Spam Collection v.1\n")
    return buf.getvalue()


def test_download_primary_404_then_backup_then_cached(zip_server, sms_file, tmp_path):
    zip_server.routes["/backup.zip"] = (200, _zip_bytes(sms_file.read_bytes()))
    urls = (f"{zip_server.base}/primary.zip", f"{zip_server.base}/backup.zip")
    path = download_sms_spam(tmp_path, timeout=5, urls=urls, progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SMS_SHA256
    assert zip_server.requests == ["/primary.zip", "/backup.zip"]
    assert [p.name for p in path.parent.iterdir()] == ["SMSSpamCollection"]  # the zip is deleted
    assert download_sms_spam(tmp_path, timeout=5, urls=urls, progress=False) == path
    assert len(load_sms_spam(cache=tmp_path)["train"]) == 1045  # from the cache, no network
    assert zip_server.requests == ["/primary.zip", "/backup.zip"]


@pytest.mark.parametrize("body", ["altered_member", "not_a_zip"])
def test_download_corrupted_zip_caches_nothing(zip_server, sms_file, tmp_path, body):
    data = sms_file.read_bytes()
    content = _zip_bytes(data.replace(b"ham", b"spam", 1)) if body == "altered_member" else b"<html>oops</html>"
    zip_server.routes["/sms.zip"] = (200, content)
    url = f"{zip_server.base}/sms.zip"
    with pytest.raises(UnavailableError) as info:
        download_sms_spam(tmp_path, timeout=5, urls=[url], progress=False)
    msg = str(info.value)
    assert url in msg and "bad archive" in msg and "\n" not in msg
    assert list((tmp_path / "sms_spam_collection").iterdir()) == []
    # the next call retries, and succeeds once the server is fixed
    zip_server.routes["/sms.zip"] = (200, _zip_bytes(data))
    assert download_sms_spam(tmp_path, timeout=5, urls=[url], progress=False).read_bytes() == data


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SPAM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path and cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("HF_SPAM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "hf_spam"
