"""The ``hf-spam`` command: use a trained model, and the chapter's other steps.

    hf-spam predict --model FOLDER_OR_ID "text" ...        # or --file messages.txt, or stdin
    hf-spam evaluate --model FOLDER [data flags of training | --labelled_file F] [--output_dir DIR]
    hf-spam export --model FOLDER --output FILE.onnx [--quantize int8]     # or --format transformers --output DIR
    hf-spam serve --model FOLDER [--host 127.0.0.1 --port 8000 --backend torch|onnx]
    hf-spam demo --model FOLDER_OR_ID [--host 127.0.0.1 --port 7860]
    hf-spam space --model HUB_ID --output DIR [--native | --remote_code]
    hf-spam push FOLDER --repo_id NAME [--private]
    hf-spam cache list|clear [--data_cache_dir DIR | --feature_cache_dir DIR]
    hf-spam sanity [--model_name_or_path gpt2]
    hf-spam prepare-data [--data_file F] [--output_dir data]

Training is ``scripts/train.py``. ``predict`` writes one JSON line per message, in input order, as it
goes. Errors are one ``error: ...`` line: exit status 2 for bad input, 3 when something cannot be
downloaded or the Hub refuses (1 when the chapter's sanity check fails). Each command imports what only
it needs (datasets, matplotlib, onnxruntime, the web server) when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, get_args, get_type_hints

from transformers.hf_argparser import string_to_bool
from transformers.utils import logging as hf_logging

from . import __version__
from .arguments import DataArguments
from .arithmetic import DTYPE_CHOICES
from .errors import HfSpamError, UnavailableError, reported_errors, without_secrets

# Texts for checks when no data is at hand: the chapter's two examples and a few of every kind and length.
SAMPLE_TEXTS = (
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "", "ok", "URGENT! Your mobile number has won a prize. Call 09061701461 to claim. T&Cs apply. 18+ only.",
    "a message with <|endoftext|> inside it", "word " * 300, "Running late, see you at the station at 6?",
)


class _Parser(argparse.ArgumentParser):
    """argparse that never echoes a token (as in ``unrecognized arguments: --tokn hf_...``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {without_secrets(message)}\n")


def _dtype(args: argparse.Namespace) -> str | None:
    """The ``--dtype`` asked for (``--bf16`` is ``--dtype bfloat16``), or ``None`` when neither is given."""
    if args.bf16 and args.dtype not in (None, "bfloat16"):
        raise HfSpamError(f"--bf16 is --dtype bfloat16, and --dtype {args.dtype} was given too; give one")
    return "bfloat16" if args.bf16 else args.dtype


def _classifier(args: argparse.Namespace, dtype: str | None = None):  # noqa: ANN202 - SpamClassifier, with torch
    """The model of ``--model`` in ``dtype`` (default: what --dtype/--bf16 ask); a choice other than the default
    float32 is noted on stderr."""
    from .predict import SpamClassifier

    asked = dtype or _dtype(args)
    clf = SpamClassifier.from_pretrained(args.model, device=args.device, dtype=asked,
                                         trust_remote_code=args.trust_remote_code)
    if asked is not None:
        print(f"note: arithmetic {clf.arithmetic.dtype} (--dtype {clf.arithmetic.requested}: "
              f"{clf.arithmetic.reason})", file=sys.stderr)
    return clf


def _lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 file (``-``: stdin), read lazily; only ``\\n`` ends a line."""
    name = "<stdin>" if path == "-" else path
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        for number, raw in enumerate(stream, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise HfSpamError(f"{name}:{number}: not UTF-8 text ({err.reason} at byte {err.start + 1} of the "
                                  "line); expected one UTF-8 message per line") from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def predict(args: argparse.Namespace) -> None:
    if args.texts and args.file:
        raise HfSpamError("predict: give texts or --file, not both")
    if args.batch_size < 1 or args.chunk_size < 1:
        raise HfSpamError("predict: --batch_size and --chunk_size must be positive")
    if args.file and args.file != "-" and not Path(args.file).is_file():
        what = "is a directory" if Path(args.file).is_dir() else "file not found"
        raise HfSpamError(f"{args.file}: {what}; expected a text file with one message per line")
    if sys.stdout is None or sys.stdout.closed:
        raise HfSpamError("stdout is closed; predictions are written there (redirect it to a file)")
    if not args.texts and args.file in (None, "-") and (sys.stdin is None or sys.stdin.closed):
        raise HfSpamError("stdin is closed; give messages as arguments, with --file, or on stdin")
    clf = _classifier(args)
    if args.texts:  # texts given as arguments are used exactly as given
        records = iter(clf.predict(args.texts, batch_size=args.batch_size))
    else:
        records = clf.predict_stream(_lines(args.file or "-"), batch_size=args.batch_size, chunk_size=args.chunk_size)
    sys.stdout.reconfigure(encoding="utf-8")
    for n, record in enumerate(records, start=1):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        if n % args.chunk_size == 0:
            sys.stdout.flush()  # a chunk's results go out before the next chunk is read
    sys.stdout.flush()


# The data flags ``evaluate`` shares with training (DataArguments' help); the cut's come from training_args.json.
EVALUATE_DATA_FLAGS = ("data_file", "dataset_name", "dataset_config_name", "train_file", "validation_file",
                       "test_file", "text_column", "label_column", "label_names", "positive_label", "split_seed",
                       "validation_split_percentage", "test_split_percentage", "natural_balance", "balance",
                       "max_eval_samples", "max_test_samples", "data_cache_dir")


def evaluate(args: argparse.Namespace) -> None:
    from .evaluation import as_trained, evaluate_classifier, labelled_file_data, split_data

    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise HfSpamError(f"{args.output_dir}: exists and is not a folder; expected an output folder")
    given = {key: getattr(args, key) for key in EVALUATE_DATA_FLAGS if getattr(args, key) is not None}
    data = labelled_file_data(args.labelled_file, given) if args.labelled_file else \
        split_data(DataArguments(**as_trained(args.model, given)).source_settings, args.split)
    classifier = _classifier(args)
    evaluate_classifier(classifier, data, args.model, positive_label=args.positive_label,
                        batch_size=args.batch_size, output_dir=args.output_dir,
                        decision_threshold=args.decision_threshold)
    if classifier.arithmetic.dtype != "float32":  # the cost of the cheaper arithmetic, measured on the same data
        from .evaluation import compare_arithmetic
        from .predict import SpamClassifier

        reference = SpamClassifier.from_pretrained(args.model, device=args.device,
                                                   trust_remote_code=args.trust_remote_code)
        compare_arithmetic(reference, classifier, data, positive_label=args.positive_label,
                           batch_size=args.batch_size, output_dir=args.output_dir)


def export(args: argparse.Namespace) -> None:
    from .data import LABEL_NAMES, load_sms_spam
    from .export import export_onnx, onnx_classifier, quantize_int8

    if args.format == "transformers" and args.quantize:
        raise HfSpamError("export: --quantize applies to --format onnx only")
    try:
        test = load_sms_spam(args.data_file, cache=args.cache_dir)["test"]
        texts, truth, source = list(test["text"]), list(test["label"]), "test texts"
    except UnavailableError:
        if args.quantize:  # int8 is compared on the labelled test split
            raise
        texts, truth, source = list(SAMPLE_TEXTS), [], "sample texts (the SMS data could not be had)"
    if args.format == "transformers":
        from .native import export_native

        report = export_native(args.model, args.output, texts[: args.check_texts])
        print(f"Exported {report['folder']} (GPT2ForSequenceClassification, no remote code); transformers vs hf-spam "
              f"on {report['texts']} {source}: max |logit difference| {report['max_abs_diff']:.2g} (<= 1e-4)"
              f"{'; empty texts left out (GPT-2 has no token to read there)' if report['empty'] else ''}")
        return
    report = export_onnx(args.model, args.output, texts[: args.check_texts])
    print(f"Exported {report['file']} ({report['bytes'] / 2**20:.1f} MiB); onnxruntime vs PyTorch on "
          f"{report['texts']} {source}: max |logit difference| {report['max_abs_diff']:.2g} (<= 1e-4)")
    if args.quantize == "int8":
        int8 = Path(args.output).with_name(Path(args.output).stem + "-int8.onnx")
        quantize_int8(args.output, int8)
        float32, quantised = onnx_classifier(args.output, args.model), onnx_classifier(int8, args.model)
        results = {name: [clf.names.index(r["label"]) for r in clf.predict_labels(texts)]
                   for name, clf in (("float32", float32), ("int8", quantised))}
        if float32.names == LABEL_NAMES:  # a ham/spam model: accuracy on the SMS test split
            print(f"Quantised {int8} ({int8.stat().st_size / 2**20:.1f} MiB); accuracy on the SMS test split "
                  f"({len(texts)} texts):")
            for name, predicted in results.items():
                print(f"  {name:<8} {sum(p == t for p, t in zip(predicted, truth)) / len(truth) * 100:6.2f}%")
        else:  # other labels: the SMS texts have none of them; how often int8 agrees with float32
            same = sum(a == b for a, b in zip(results["float32"], results["int8"]))
            print(f"Quantised {int8} ({int8.stat().st_size / 2**20:.1f} MiB); int8 and float32 agree on {same} of "
                  f"{len(texts)} SMS test texts (labels {', '.join(float32.names)}: no accuracy on SMS data)")


def serve(args: argparse.Namespace) -> None:
    from .serve import Limits, serve

    if args.backend == "onnx":
        from .export import onnx_classifier

        if _dtype(args) is not None:
            raise HfSpamError("serve: --dtype/--bf16 apply to --backend torch; an ONNX file runs in the arithmetic it "
                              "was exported in (for int8: hf-spam export --quantize int8, then --onnx_file "
                              "MODEL-int8.onnx)")

        onnx_file = Path(args.onnx_file or Path(args.model) / "model.onnx")
        if not onnx_file.is_file():
            raise HfSpamError(f"{onnx_file}: no ONNX file; export one first: hf-spam export --model {args.model} "
                              f"--output {onnx_file}")
        classifier = onnx_classifier(onnx_file, args.model)
    else:
        classifier = _classifier(args)
    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_queue, args.max_texts_per_request,
                    args.max_chars_per_request, args.workers)
    if min(args.max_batch_size, args.max_queue, args.max_texts_per_request, args.max_chars_per_request,
           args.workers) < 1 or args.max_wait_ms < 0:
        raise HfSpamError("serve: the batch, queue and request limits and --workers must be positive (and "
                          "--max_wait_ms >= 0)")
    serve(classifier, limits, args.host, args.port, args.backend)


def demo(args: argparse.Namespace) -> None:
    from .demo import build_demo, gradio_version

    gradio_version()  # before the model loads
    build_demo(_classifier(args), args.model, args.batch_size).launch(server_name=args.host, server_port=args.port)


def space(args: argparse.Namespace) -> None:
    from .demo import write_space

    folder, remote, note = write_space(args.model, args.output, remote_code=args.remote_code, space_title=args.title)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"Wrote a Gradio Space to {folder}: README.md, app.py, requirements.txt (the model runs "
          f"{'with' if remote else 'without'} trust_remote_code). Upload it: hf upload SPACE_ID {folder} "
          "--repo-type space")


def push(args: argparse.Namespace) -> None:
    from .hub import push_folder_to_hub

    print(push_folder_to_hub(args.folder, args.repo_id, private=args.private, token=args.token,
                             commit_message=args.commit_message))


def sanity(args: argparse.Namespace) -> None:
    from .predict import checked_device
    from .sanity import sanity_report
    from .tokenization import get_encoding
    from .weights import HUB_IDS, hub_id, load_gpt2

    model = load_gpt2(args.model_name_or_path, cache_dir=args.cache_dir).to(checked_device(args.device))
    encoding = get_encoding(args.bpe_dir)
    cfg, n_params = model.cfg, sum(p.numel() for p in model.parameters())  # the tied head once
    print(f"Model: {args.model_name_or_path} ({n_params / 1e6:.1f}M parameters: {cfg.n_layers} "
          f"layers, width {cfg.emb_dim}, {cfg.n_heads} heads, context {cfg.context_length})")
    report, mismatches = sanity_report(model, encoding, new_tokens=(args.max_new_tokens, args.zero_shot_tokens),
                                       compare_with_chapter=hub_id(args.model_name_or_path) == HUB_IDS["gpt2-small"])
    print(report)
    if mismatches:
        print(f"error: {', '.join(mismatches)}: output differs from the chapter's for GPT-2 124M", file=sys.stderr)
        sys.exit(1)


def prepare_data(args: argparse.Namespace) -> None:
    from .data import load_sms_spam, write_splits_csv

    dataset = load_sms_spam(args.data_file, cache=args.cache_dir, balanced=not args.natural_balance, seed=args.seed)
    for split, path in write_splits_csv(dataset, args.output_dir).items():
        print(f"{split}: {dataset[split].num_rows} rows -> {path}")


def cache(args: argparse.Namespace) -> None:
    from .feature_files import clear_feature_caches, list_feature_caches
    from .files import cache_dir

    if args.feature_cache_dir and args.data_cache_dir:
        raise HfSpamError("cache: give --data_cache_dir or --feature_cache_dir, not both")
    folder = Path(args.feature_cache_dir) if args.feature_cache_dir else cache_dir(args.data_cache_dir) / "features"
    if folder.exists() and not folder.is_dir():
        raise HfSpamError(f"{folder}: not a folder; expected a frozen-trunk feature cache folder")
    entries = clear_feature_caches(folder) if args.action == "clear" else list_feature_caches(folder)
    for entry in entries:
        what = f"{entry['rows']} rows, {entry['feature_dtype']}" if entry["kind"] == "features" else entry["kind"]
        print(f"{'removed ' if args.action == 'clear' else ''}{entry['path'].name}  {entry['bytes'] / 1e6:,.1f} MB  "
              f"({what}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(entry['modified']))})")
    total = sum(entry["bytes"] for entry in entries)
    verb = "Removed" if args.action == "clear" else "Total"
    print(f"{verb}: {len(entries)} file(s), {total / 1e9:.2f} GB in {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-spam", description="GPT-2 as an SMS spam classifier (Build a Large Language Model "
                     "From Scratch, ch. 6). Training: scripts/train.py.")
    parser.add_argument("--version", action="version", version=f"hf-spam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="model folder written by training, or a Hub model id")
        p.add_argument("--batch_size", type=int, default=64, help="texts per forward pass (default 64)")
        p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="the arithmetic: float32 (default), "
                       "bfloat16 (weights), int8 (dynamic quantisation of the Linear layers, CPU), or auto: bfloat16 "
                       "where the processor has it natively (avx512_bf16/amx_bf16, or a CUDA GPU with bf16), else "
                       "float32")
        p.add_argument("--bf16", action="store_true", help="the same as --dtype bfloat16")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
        p.add_argument("--trust_remote_code", action="store_true",
                       help="run the folder's own modeling_gpt.py instead of the installed hf_spam classes")

    p = sub.add_parser("predict", help="label messages as ham or spam (JSON lines on stdout)",
                       description="Label messages: from the arguments, --file (one per line) or stdin.")
    model_args(p)
    p.add_argument("texts", nargs="*", help="messages to classify (default: read --file or stdin)")
    p.add_argument("--file", help="UTF-8 text file with one message per line ('-' for stdin)")
    p.add_argument("--chunk_size", type=int, default=1024, help="lines read and sorted at a time; bounds memory")
    p.set_defaults(func=predict)

    p = sub.add_parser("evaluate", help="accuracy, precision, recall, F1, ROC AUC, calibration, per class and a "
                       "confusion matrix",
                       description="Score a model on a split it never trained on: the test split (or --split "
                       "validation) of the data cut exactly as its training run cut it (the SMS collection, or your "
                       "data with training's data flags; the cut's settings come from the model's "
                       "training_args.json), or every row of a labelled SMS-format file.")
    model_args(p)
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(DataArguments)}
    for name in EVALUATE_DATA_FLAGS:
        kind = {"label_names": {"nargs": "+"}, "natural_balance": {"type": string_to_bool, "nargs": "?", "const": True},
                "split_seed": {"type": int}, "max_eval_samples": {"type": int}, "max_test_samples": {"type": int},
                "validation_split_percentage": {"type": float}, "test_split_percentage": {"type": float},
                "balance": {"choices": get_args(get_type_hints(DataArguments)["balance"])}}
        aliases = ["--cache_dir"] if name == "data_cache_dir" else []
        p.add_argument(f"--{name}", *aliases, default=None, help=helps[name], **kind.get(name, {}))
    p.add_argument("--labelled_file", help="file of 'ham|spam<TAB>text' lines: evaluate on all of them")
    p.add_argument("--split", choices=["test", "validation"], default="test", help="the split scored (default test)")
    p.add_argument("--decision_threshold", type=float, default=None,
                   help="two labels: decide the positive class when its probability (before any threshold the model "
                   "has folded in) is at least this; re-scores without retraining (default: the model's own decision)")
    p.add_argument("--output_dir", help="write eval_metrics.json and confusion-matrix.png here")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("export", help="export a model folder to ONNX, or to a plain transformers GPT-2 folder",
                       description="Export a trained folder to one ONNX graph (trunk, pooling, head; dynamic batch and "
                       "sequence axes, inputs shaped as in training) and check onnxruntime's logits against "
                       "PyTorch's on test texts (needs the onnx extra); or, with --format transformers, to a folder "
                       "holding a GPT2ForSequenceClassification that loads without trust_remote_code (models trained "
                       "with --pooling last_non_pad --padding dynamic), checked the same way.")
    p.set_defaults(func=export)
    p.add_argument("--model", required=True, help="model folder written by training")
    p.add_argument("--format", choices=["onnx", "transformers"], default="onnx",
                   help="onnx (default): one ONNX file; transformers: a GPT-2 model folder")
    p.add_argument("--output", required=True, help="the ONNX file (FILE.onnx), or the folder for --format transformers")
    p.add_argument("--quantize", choices=["int8"], help="also write FILE-int8.onnx (dynamic int8 quantisation) "
                   "and print both accuracies on the test split")
    p.add_argument("--data_file", help="SMSSpamCollection file for the check texts (default: download)")
    p.add_argument("--cache_dir", help="download cache for the collection")
    p.add_argument("--check_texts", type=int, default=64, help="test texts the parity check runs on (default 64)")

    p = sub.add_parser("serve", help="an HTTP service that batches concurrent requests (the serve extra)",
                       description='POST / or /predict {"inputs": "..." | [...], "parameters": {"top_k": K, '
                       '"function_to_apply": ...}} answers like pipeline("text-classification"); GET /health, /info, '
                       "/metrics (Prometheus), /docs. Requests from many clients are gathered into batches; limits "
                       "answer 413/422/503 instead of growing memory.")
    model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="PyTorch, or onnxruntime on "
                   "an exported file (hf-spam export)")
    p.add_argument("--onnx_file", help="the ONNX file for --backend onnx (default MODEL/model.onnx)")
    p.add_argument("--max_batch_size", type=int, default=64, help="texts per forward pass at most (default 64)")
    p.add_argument("--max_wait_ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--workers", type=int, default=2, help="batches computing at once (default 2: the next one starts "
                   "while one is answered; each uses all of torch's threads)")
    p.add_argument("--max_queue", type=int, default=1024, help="texts waiting at most; then 503 (default 1024)")
    p.add_argument("--max_texts_per_request", type=int, default=256, help="else 413 (default 256)")
    p.add_argument("--max_chars_per_request", type=int, default=20_000, help="else 413 (default 20,000)")
    p.set_defaults(func=serve)

    p = sub.add_parser("demo", help="a Gradio app on a model: a message box and a file tab (the demo extra)",
                       description="A web page: a message's label and probabilities (the card's examples to try), "
                       "and a file tab: .txt (a message a line) or .csv (a text column) in, a CSV of them out.")
    model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=demo)

    p = sub.add_parser("space", help="write a Hugging Face Space (Gradio) for a model on the Hub",
                       description="Write README.md (sdk: gradio), app.py and requirements.txt into --output: the "
                       "demo's app on transformers' pipeline, needing no hf_spam. MODEL_ID in the Space's "
                       "environment overrides the model.")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--native", dest="remote_code", action="store_false", default=None,
                      help="a native transformers model (model_type gpt2): no trust_remote_code")
    kind.add_argument("--remote_code", dest="remote_code", action="store_true",
                      help="an hf-spam model folder: trust_remote_code=True (the default when the model's "
                      "config.json cannot be read; else it decides, and a contrary flag is an error)")
    p.add_argument("--model", required=True, help="the model's Hub id (push a folder first: hf-spam push)")
    p.add_argument("--output", required=True, help="the Space's folder (its three files are overwritten)")
    p.add_argument("--title", help="the Space's title (default: from the model's name)")
    p.set_defaults(func=space)

    p = sub.add_parser("cache", help="list or remove the frozen-trunk feature cache files",
                       description="The frozen-trunk features training caches on disk (one safetensors file per split "
                       "and model): list them with their sizes, or remove them all.")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--data_cache_dir", help="the cache folder training used (default $HF_SPAM_CACHE or "
                   "~/.cache/hf_spam); the features are in its features/ folder")
    p.add_argument("--feature_cache_dir", help="the feature folder itself, if training was given one")
    p.set_defaults(func=cache)

    p = sub.add_parser("push", help="push a trained model folder to the Hugging Face Hub")
    p.add_argument("folder", help="model folder (config.json, model.safetensors, modeling_gpt.py ...)")
    p.add_argument("--repo_id", required=True, help="Hub model repo: NAME or OWNER/NAME (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", help="write token (default: $HF_TOKEN or `hf auth login`, which other users of "
                   "this machine cannot see, unlike a command line)")
    p.add_argument("--commit_message", default="Upload GPT spam classifier (hf-spam)")
    p.set_defaults(func=push)

    p = sub.add_parser("sanity", help="the chapter's checks of pretrained GPT-2 (generation, zero-shot prompt)")
    p.add_argument("--model_name_or_path", default="openai-community/gpt2",
                   help="Hub id or alias (gpt2, 124M ...), a local HF folder or OpenAI's TF folder")
    p.add_argument("--cache_dir", help="Hugging Face cache folder (default: the Hub's own)")
    p.add_argument("--bpe_dir", help="folder with GPT-2's encoder.json and vocab.bpe (offline use)")
    p.add_argument("--max_new_tokens", type=int, default=15, help="tokens generated for the first prompt")
    p.add_argument("--zero_shot_tokens", type=int, default=23, help="tokens generated for the spam prompt")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    p.set_defaults(func=sanity)

    p = sub.add_parser("prepare-data", help="write the chapter's train/validation/test CSV files")
    p.add_argument("--data_file", help="local SMSSpamCollection file (default: download into the cache)")
    p.add_argument("--cache_dir", help="download cache (default: $HF_SPAM_CACHE or ~/.cache/hf_spam)")
    p.add_argument("--output_dir", default="data", help="folder for train.csv, validation.csv, test.csv")
    p.add_argument("--natural_balance", action="store_true", help="keep all messages (stratified split)")
    p.add_argument("--seed", type=int, default=123, help="sampling and shuffling seed (the chapter's 123)")
    p.set_defaults(func=prepare_data)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hf-spam`` console script (and of the thin scripts in ``scripts/``)."""
    args = build_parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # stderr is for errors (and stdout, for predict, the JSON lines)
    with reported_errors():
        try:
            args.func(args)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)


if __name__ == "__main__":
    main()
