"""The UCI SMS Spam Collection as a ``datasets.DatasetDict``, split exactly like the chapter.

``load_sms_spam()`` downloads the collection (UCI, then the book's backup URL) into a cache,
reads it with line-precise validation, balances it (747 ham + 747 spam, ``random_state=123``),
shuffles and cuts it 70/10/20 into ``train``/``validation``/``test`` (1,045 / 149 / 300 rows).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import pandas as pd

from .download import download_file, extract_zip_member, sha256_file
from .errors import HfSpamError
from .files import atomic_path, cache_dir

SMS_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
# sha256 of the extracted SMSSpamCollection (the zip files at the two URLs need not be byte-identical).
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_MEMBER = "SMSSpamCollection"
LABEL_NAMES = ["ham", "spam"]
SPLITS = ("train", "validation", "test")
_EXPECTED = "expected UTF-8 lines of 'ham' or 'spam', a tab, and the message text"


def download_sms_spam(
    cache: str | os.PathLike | None = None,
    timeout: float = 30.0,
    *,
    urls: Sequence[str] = SMS_URLS,
    progress: bool = True,
) -> Path:
    """Path of the verified ``SMSSpamCollection`` in the cache, downloading the zip when needed.

    A verified extracted file is reused without any network access. Each URL is tried in turn
    (UCI, then the backup) until one gives a zip whose member matches ``SMS_SHA256``; the zip is
    deleted after extraction (only the verified text file is kept). Raises ``UnavailableError``.
    """
    folder = cache_dir(cache) / "sms_spam_collection"
    target = folder / SMS_MEMBER
    if target.is_file():
        if sha256_file(target) == SMS_SHA256:
            return target
        target.unlink()  # not the collection: never reuse it
    zip_path = folder / "sms_spam_collection.zip"
    try:  # the zip is only a vehicle: a URL whose zip lacks the verified member counts as failed
        download_file(urls, zip_path, timeout=timeout, desc="SMS Spam Collection", progress=progress,
                      check=lambda tmp: extract_zip_member(tmp, SMS_MEMBER, target, sha256=SMS_SHA256))
    finally:
        zip_path.unlink(missing_ok=True)
    return target


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise HfSpamError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[err.start]:02x}); {_EXPECTED}") from None
    return text[1:] if text.startswith("\ufeff") else text  # drop a BOM, as pandas does


def _quote_left_open(text: str, first_line: int) -> bool:
    """Whether the rows from ``first_line`` on end inside an open quote.

    The lenient csv reader silently closes a quote left open at the end of the file (pandas
    refuses it); a strict re-read of that last multi-line row tells the two apart.
    """
    tail = "".join(io.StringIO(text, newline="").readlines()[first_line - 1 :])
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter="\t", strict=True))
    except csv.Error as err:
        return "unexpected end of data" in str(err)
    return False


def read_sms_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read an SMS Spam Collection file into a frame with columns ``Label`` and ``Text``.

    Gives exactly the rows of ``pd.read_csv(path, sep="\\t", header=None, names=["Label", "Text"])``
    on the real file (its default quote handling merges a few lines; kept on purpose), but checks
    every row and raises ``HfSpamError`` naming the file and line. Handled: blank lines (skipped,
    like pandas), a BOM, CRLF line ends, and a header row ``label<TAB>text`` in any case (skipped).
    Refused: invalid UTF-8, rows without exactly two tab-separated columns, labels other than
    lower-case ``ham``/``spam`` (strict: ``Ham`` or `` spam`` are errors), empty or blank text, an
    unterminated quote, and files with no data rows. Kept as they are: texts containing
    ``<|endoftext|>`` (tokenized as ordinary text) and texts longer than GPT-2's 1,024-token
    context (truncated at tokenization).
    """
    path = Path(path)
    if path.is_dir():
        raise HfSpamError(f"{path}: is a directory; expected the SMS Spam Collection text file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HfSpamError(f"{path}: file not found; expected the SMS Spam Collection text file") from None
    except OSError as err:
        raise HfSpamError(f"{path}: cannot read ({err.strerror}); expected a readable text file") from None
    text = _decode(path, raw)

    labels: list[str] = []
    texts: list[str] = []
    csv.field_size_limit(2**31 - 1)  # a message of any length (cut to the context at tokenization)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    seen_row = False
    last_start = 1  # first line of the last row read
    last_row: list[str] = []
    while True:
        start = reader.line_num + 1  # first physical line of the next row (quoted texts may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise HfSpamError(f"{path}:{start}: unreadable row ({err}; unbalanced quote?); {_EXPECTED}") from None
        if not row:
            continue  # blank line
        last_start, last_row = start, row
        if not seen_row:
            seen_row = True
            if [field.strip().lower() for field in row] == ["label", "text"]:
                continue  # header row
        if len(row) != 2:
            raise HfSpamError(f"{path}:{start}: {len(row)} tab-separated column(s); {_EXPECTED}")
        label, message = row
        if label not in LABEL_NAMES:
            raise HfSpamError(f"{path}:{start}: label {label!r}; expected 'ham' or 'spam' (lower case)")
        if not message.strip():
            raise HfSpamError(f"{path}:{start}: empty message text; {_EXPECTED}")
        labels.append(label)
        texts.append(message)
    if last_row and _quote_left_open(text, last_start):
        raise HfSpamError(f"{path}:{last_start}: a quote opened on this line is never closed; {_EXPECTED}")
    if not labels:
        raise HfSpamError(f"{path}: no data rows; {_EXPECTED}")
    return pd.DataFrame({"Label": labels, "Text": texts})


def _to_dataset(df: pd.DataFrame) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABEL_NAMES)})
    return datasets.Dataset.from_dict(
        {"text": df["Text"].tolist(), "label": [int(x) for x in df["Label"]]}, features=features
    )


def _cut(df: pd.DataFrame, train_frac: float, validation_frac: float) -> list[pd.DataFrame]:
    # The chapter's cut points: int() of each fraction, test takes the rest.
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return [df[:train_end], df[train_end:validation_end], df[validation_end:]]


def load_sms_spam(
    data_file: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    balanced: bool = True,
    seed: int = 123,
    train_frac: float = 0.7,
    validation_frac: float = 0.1,
) -> datasets.DatasetDict:
    """The collection as ``train``/``validation``/``test`` with columns ``text`` and ``label`` (ClassLabel).

    ``balanced=True`` is the chapter's recipe: sample the larger class down to the smaller one
    (747 ham with ``random_state=seed``), concatenate ham then spam, shuffle with ``seed`` and cut
    70/10/20 (1,045 / 149 / 300 rows for the real file and seed 123). ``balanced=False`` keeps all
    rows and cuts each class separately (stratified), then shuffles each split with ``seed``.
    Downloads the collection when ``data_file`` is None.
    """
    if not (0 < train_frac < 1 and 0 <= validation_frac < 1 and train_frac + validation_frac < 1):
        raise HfSpamError(
            f"train_frac={train_frac}, validation_frac={validation_frac}: expected 0 < train_frac, "
            "0 <= validation_frac and train_frac + validation_frac < 1 (the test split takes the rest)"
        )
    path = Path(data_file) if data_file is not None else download_sms_spam(cache)
    df = read_sms_file(path)
    ham, spam = df[df["Label"] == "ham"], df[df["Label"] == "spam"]
    for name, part in (("ham", ham), ("spam", spam)):
        if part.empty:
            raise HfSpamError(f"{path}: no {name!r} rows; expected both 'ham' and 'spam' messages")
    if balanced:
        n = min(len(ham), len(spam))
        if len(ham) > n:
            ham = ham.sample(n, random_state=seed)
        if len(spam) > n:
            spam = spam.sample(n, random_state=seed)
        both = pd.concat([ham, spam])
        both = both.assign(Label=both["Label"].map({"ham": 0, "spam": 1}))
        both = both.sample(frac=1, random_state=seed).reset_index(drop=True)
        parts = _cut(both, train_frac, validation_frac)
    else:
        per_class = [
            _cut(part.assign(Label=i).sample(frac=1, random_state=seed), train_frac, validation_frac)
            for i, part in enumerate((ham, spam))
        ]
        parts = [
            pd.concat([h, s]).sample(frac=1, random_state=seed).reset_index(drop=True)
            for h, s in zip(*per_class)
        ]
    for split, part in zip(SPLITS, parts):
        if part.empty and not (split == "validation" and validation_frac == 0):
            raise HfSpamError(
                f"{path}: too few rows ({len(df)}) for a non-empty {split} split; expected more messages"
            )
    return datasets.DatasetDict({split: _to_dataset(part) for split, part in zip(SPLITS, parts)})


def write_splits_csv(dataset: datasets.DatasetDict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``{split}.csv`` (columns ``Label`` (0/1) and ``Text``, no index, like the chapter) atomically."""
    paths: dict[str, Path] = {}
    for split, ds in dataset.items():
        paths[split] = Path(out_dir) / f"{split}.csv"
        with atomic_path(paths[split]) as tmp:
            pd.DataFrame({"Label": list(ds["label"]), "Text": list(ds["text"])}).to_csv(tmp, index=False)
    return paths
