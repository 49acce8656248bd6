"""A Gradio app for a text classifier: a message (each label's probability) or a file of messages (a CSV out).

``hf-spam demo`` runs it on a local model; ``hf-spam space`` copies it into a Hugging Face Space as ``app.py``
with the settings below filled in, where it needs only gradio, transformers and torch (no hf_spam).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

# The Space's settings (written by `hf-spam space`); the MODEL_ID environment variable overrides MODEL.
MODEL = "OWNER/NAME"
TRUST_REMOTE_CODE = True
TITLE = "SMS spam classifier"
EXAMPLES = []
BATCH = 16  # messages per step of the file tab's progress bar

Classify = Callable[[list[str]], list[dict[str, float]]]  # texts -> each label's probability, in the model's order


def pipeline_classifier(model: str, trust_remote_code: bool) -> Classify:
    """transformers' text-classification pipeline, as each label's probability per text."""
    from transformers import pipeline

    clf = pipeline("text-classification", model=model, trust_remote_code=trust_remote_code)
    names = [clf.model.config.id2label[i] for i in range(len(clf.model.config.id2label))]

    def classify(texts: list[str]) -> list[dict[str, float]]:
        scores = [{d["label"]: d["score"] for d in r} for r in clf(texts, top_k=None, truncation=True)]
        return [{name: s[name] for name in names} for s in scores]

    return classify


def read_messages(path: str) -> list[str]:
    """The messages of a ``.txt`` file (one a line) or a ``.csv`` file (its ``text`` column, or its only one)."""
    name = Path(path).name
    try:
        content = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise gr.Error(f"{name}: not UTF-8 text ({err.reason} at byte {err.start + 1})") from None
    if Path(path).suffix.lower() != ".csv":
        return [line.removesuffix("\r") for line in content.removesuffix("\n").split("\n")] if content else []
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = reader.fieldnames or []
    column = next((c for c in columns if c.strip().lower() == "text"), columns[0] if len(columns) == 1 else None)
    if column is None:
        raise gr.Error(f"{name}: no text column (columns: {', '.join(columns) or 'none'}); name the messages' "
                       "column text")
    return [row[column] or "" for row in reader]


def classify_file(classify: Classify, path: str | None, progress: gr.Progress) -> str:
    """A CSV of each message's text, label and every label's probability, from ``read_messages(path)``."""
    if not path:
        raise gr.Error("Choose a .txt file (one message a line) or a .csv file (a text column) first")
    texts = read_messages(path)
    if not texts:
        raise gr.Error(f"{Path(path).name}: no messages")
    probs: list[dict[str, float]] = []
    for start in progress.tqdm(range(0, len(texts), BATCH), desc="Classifying"):
        probs += classify(texts[start : start + BATCH])
    out = Path(tempfile.mkdtemp(prefix="predictions-")) / f"{Path(path).stem}-predictions.csv"
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", *(f"probability_{name}" for name in probs[0])])
        writer.writerows([text, max(p, key=p.get), *p.values()] for text, p in zip(texts, probs))
    return str(out)


def build_demo(classify: Classify, examples: Sequence[str] = (), title: str = TITLE) -> gr.Blocks:
    """The app: a message tab (``/classify``) and a file tab (``/classify_file``)."""

    def one(text: str) -> dict[str, float]:
        if not text.strip():
            raise gr.Error("Type a message first")
        return classify([text])[0]

    def many(path: str | None, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - gradio's way
        return classify_file(classify, path, progress)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nType a message, or give a file of messages: the model gives each label's "
                    "probability.")
        with gr.Tab("Message"):
            message = gr.Textbox(label="Message", lines=3, elem_id="message",
                                 placeholder="Paste a text message (Shift+Enter classifies it)")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
            label = gr.Label(label="Label", elem_id="label")
            if examples:
                gr.Examples([[text] for text in examples], inputs=message, label="Examples from the model card",
                            elem_id="examples")
            gr.on([button.click, message.submit], one, message, label, api_name="classify")
        with gr.Tab("File"):
            upload = gr.File(label="A .txt file (one message a line) or a .csv file (a text column)",
                             file_types=[".txt", ".csv"], elem_id="upload")
            run = gr.Button("Classify the file", variant="primary", elem_id="classify_file")
            result = gr.File(label="Predictions: text, label and each label's probability (CSV)", elem_id="result")
            run.click(many, upload, result, api_name="classify_file")
    return demo


def space_demo() -> gr.Blocks:
    """The Space's app: ``MODEL`` (or ``$MODEL_ID``) through transformers' pipeline."""
    return build_demo(pipeline_classifier(os.environ.get("MODEL_ID") or MODEL, TRUST_REMOTE_CODE), EXAMPLES, TITLE)


if __name__ == "__main__":  # a Space runs `python app.py`
    space_demo().launch()
