"""``hf-spam demo`` (a Gradio app on a model) and ``hf-spam space`` (the same app as a Hugging Face Space).

The app is ``space_app.py``; a Space's ``app.py`` is a copy with the model's settings filled in, so it runs with
gradio, transformers and torch alone. Both need the ``demo`` extra (gradio).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from importlib.metadata import requires, version
from pathlib import Path
from pprint import pformat
from typing import TYPE_CHECKING, Any

from huggingface_hub import SpaceCard, SpaceCardData, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from packaging.requirements import Requirement
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id, write_text
from .model_card import WIDGET

if TYPE_CHECKING:
    from .predict import SpamClassifier

DEMO_HINT = 'needs the demo extra: pip install "hf-spam[demo]"'
APP = Path(__file__).with_name("space_app.py")
SPACE_README = """---
{{ card_data }}
---

# {{ title }}

A Gradio app for [{{ model }}](https://huggingface.co/{{ model }}): type a message for each label's probability,
or give a `.txt` file (one message a line) or a `.csv` file (a `text` column) for a CSV of labels and probabilities.
It runs the model with transformers' `pipeline("text-classification", model=MODEL_ID{{ remote }})`; set the Space
variable `MODEL_ID` to serve another model. Locally: `pip install -r requirements.txt && python app.py`.

Written by `hf-spam space` (the hf-spam package: chapter 6 of *Build a Large Language Model (From Scratch)*).
"""


def gradio_version() -> str:
    """The installed gradio's version, or an ``UnavailableError`` naming the extra."""
    if importlib.util.find_spec("gradio") is None:
        raise UnavailableError(f"gradio is not installed; this command {DEMO_HINT}")
    return version("gradio")


def title(model: str | os.PathLike) -> str:
    """The app's title: the model's folder or repo name."""
    return f"SMS spam classifier: {Path(os.path.abspath(model)).name}"


def build_demo(classifier: SpamClassifier, model: str, batch_size: int = 64) -> Any:  # a gradio.Blocks
    """The app on ``classifier``, with the model card's examples."""
    gradio_version()
    from .space_app import build_demo

    return build_demo(lambda texts: [r["probabilities"] for r in classifier.predict_labels(texts, batch_size)],
                      [example["text"] for example in WIDGET], title(model))


def needs_remote_code(model_id: str) -> tuple[bool | None, str]:
    """Whether the Hub model needs ``trust_remote_code`` (its model_type is not one transformers has), and why;
    ``None`` when its config.json cannot be read (offline and not cached, no such repo)."""
    try:
        config = json.loads(Path(hf_hub_download(model_id, "config.json")).read_text(encoding="utf-8"))
    except LocalEntryNotFoundError:  # offline, or the Hub not reachable
        return None, f"could not read {model_id}'s config.json (the Hub cannot be reached and it is not cached)"
    except Exception as err:  # no such repo, gated, not JSON ...
        return None, f"could not read {model_id}'s config.json ({one_line(err)[:160]})"
    kind = config.get("model_type")
    return kind not in CONFIG_MAPPING_NAMES, f"{model_id}'s config.json has model_type {kind!r}"


def write_space(model_id: str, output: str | os.PathLike, *, remote_code: bool | None = None,
                space_title: str | None = None) -> tuple[Path, bool, str | None]:
    """Write a Space (``README.md``, ``app.py``, ``requirements.txt``) for the Hub model ``model_id`` into
    ``output``; returns the folder, whether the app trusts remote code, and a note when that was a guess."""
    if not is_hub_id(model_id):
        raise HfSpamError(f"--model {model_id}: not a Hub model id; a Space loads its model from the Hub, so push "
                          "the folder first (hf-spam push FOLDER --repo_id NAME) and give that id")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise HfSpamError(f"--output {folder}: exists and is not a folder; expected the Space's folder")
    sdk = gradio_version()
    known, why = needs_remote_code(model_id)
    if known is not None and remote_code is not None and known != remote_code:
        raise HfSpamError(f"--{'remote_code' if remote_code else 'native'}: {why}, which "
                          f"{'needs' if known else 'does not need'} remote code")
    remote = next(x for x in (known, remote_code, True) if x is not None)
    note = None if known is not None or remote_code is not None else (
        f"{why}; the app trusts the model's remote code, as a model pushed by `hf-spam push` needs; give --native "
        "for a native transformers model (such as `hf-spam export --format transformers` writes)")
    settings = {"MODEL": model_id, "TRUST_REMOTE_CODE": remote, "TITLE": space_title or title(model_id),
                "EXAMPLES": [example["text"] for example in WIDGET]}
    app = APP.read_text(encoding="utf-8")
    for name, value in settings.items():
        line = f"{name} = {pformat(value, width=110)}"
        app, n = re.subn(rf"^{name} = .*$", lambda _, line=line: line, app, flags=re.M)
        if n != 1:
            raise RuntimeError(f"{APP}: expected one `{name} = ...` line, found {n}")
    ours = [Requirement(r) for r in requires("hf-spam") or []]
    needed = [str(r) for r in ours if r.name in ("torch", "transformers") and not r.marker] + [f"gradio=={sdk}"]
    card = SpaceCard.from_template(
        SpaceCardData(title=settings["TITLE"], sdk="gradio", sdk_version=sdk, app_file="app.py", models=[model_id],
                      pinned=False), template_str=SPACE_README, title=settings["TITLE"], model=model_id,
        remote=", trust_remote_code=True" if remote else "")
    write_text(folder / "app.py", app)
    write_text(folder / "requirements.txt", "\n".join(needed) + "\n")
    write_text(folder / "README.md", f"{card}\n")
    return folder, remote, note

