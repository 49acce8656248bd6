"""Compare LoRA with training the last block: same recipe, data and seed; cost and accuracy side by side.

    python scripts/compare_lora.py --weights random --model_size tiny \
        --data_file ../shared/data/sms_spam_collection/SMSSpamCollection --output_dir runs/compare_lora

Both runs start from configs/seed.yaml (or --config FILE) plus the flags given (any flag of
scripts/train.py); LoRA uses rank 16 and peft's lora_alpha 256 (the chapter's alpha 16) unless
--lora_rank/--lora_alpha say otherwise. Writes OUTPUT_DIR/comparison.md, .json and .png; each run stays
under OUTPUT_DIR/last_block and OUTPUT_DIR/lora (output in .log files beside them). Rows run like
scripts/run_experiments.py's, a --hub_token among the flags reaching them as HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from measure import markdown_table
from run_experiments import (
    ROOT,
    ROW_FLAGS,
    Row,
    check_flags,
    layers_label,
    log_file,
    output_folder,
    pct,
    public,
    row_settings,
    run_row,
    token_to_environment,
)

from hf_spam.errors import HfSpamError, hide_secrets, run_main
from hf_spam.files import write_json, write_text

# The chapter's LoRA row: rank 16 and alpha 16 with the update scaled by alpha alone = peft's lora_alpha 256.
VARIANTS = {"last_block": ["--trainable_layers", "last_block"],
            "lora": ["--trainable_layers", "lora", "--lora_rank", "16", "--lora_alpha", "256"]}
COLUMNS = ["Trainable layers", "Trainable parameters", "Share of all parameters", "Wall time", "Training time",
           "Peak memory (RSS)", "Peak GPU memory", "Training acc", "Validation acc", "Test acc", "Training F1",
           "Validation F1", "Test F1", "CPU/GPU"]
SPLIT_NAMES = (("training", "train"), ("validation", "validation"), ("test", "test"))  # column names, metric keys


def comparison_row(row: Row) -> dict[str, str]:
    m = row.metrics
    trainable, total = m.get("trainable_parameters"), m.get("total_parameters")
    seconds = f"{row.training_seconds:.1f} s" if row.training_seconds is not None else "—"
    gpu = m.get("peak_gpu_memory_mb")
    return {
        "Trainable layers": layers_label(row.settings), "Trainable parameters": f"{trainable:,}" if trainable else "—",
        "Share of all parameters": pct(trainable / total) if trainable and total else "—",
        "Wall time": f"{row.wall_seconds:.1f} s", "Training time": seconds,
        "Peak memory (RSS)": f"{row.peak_rss_mb:,.0f} MiB", "Peak GPU memory": f"{gpu:,.0f} MiB" if gpu else "—",
        **{f"{s.capitalize()} acc": pct(m.get(f"{k}_accuracy")) for s, k in SPLIT_NAMES},
        **{f"{s.capitalize()} F1": f"{m[f'{k}_f1']:.4f}" if f"{k}_f1" in m else "—" for s, k in SPLIT_NAMES},
        "CPU/GPU": m.get("device_name", "—"),
    }


def plot_comparison(rows: list[Row], path: Path) -> None:
    """Bars: trainable parameters (log scale), training time, peak memory, test accuracy and F1."""
    from hf_spam.plots import plt, save_figure  # matplotlib (files only): heavy, and only needed here at the end

    names, gpu = [r.name for r in rows], all(r.metrics.get("peak_gpu_memory_mb") for r in rows)
    panels = [("Trainable parameters", [r.metrics["trainable_parameters"] for r in rows], True),
              ("Training time (s)", [r.training_seconds or 0 for r in rows], False),
              ("Peak GPU memory (MiB)" if gpu else "Peak memory, RSS (MiB)",
               [r.metrics["peak_gpu_memory_mb"] if gpu else r.peak_rss_mb for r in rows], False)]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (title, values, log) in zip(axes, panels):
        bars = ax.bar(names, values, color=["tab:blue", "tab:orange"][: len(rows)])
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log" if log else "linear")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.2f}" for v in values], fontsize=8)
    for offset, key, label in ((-0.19, "test_accuracy", "test accuracy"), (0.19, "test_f1", "test F1")):
        bars = axes[3].bar([i + offset for i in range(len(rows))], [100 * r.metrics[key] for r in rows], 0.38,
                           label=label)
        axes[3].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[3].set_xticks(range(len(rows)), names)
    axes[3].set_ylim(0, 110)
    axes[3].set_title("Test accuracy / F1 (%)", fontsize=10)
    axes[3].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path.with_suffix(""), ("png",))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="compare_lora.py", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        usage="%(prog)s --output_dir DIR [--config RECIPE.yaml] [scripts/train.py flags]")
    parser.add_argument("--output_dir", required=True, help="Where both runs and the comparison go.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "seed.yaml"),
                        help="The recipe both runs start from.")
    args, flags = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if "--trainable_layers" in flags:
        raise HfSpamError("--trainable_layers: compare_lora trains last_block and lora itself; drop the flag")
    check_flags(flags)
    flags, env = token_to_environment(flags)
    out = output_folder(args.output_dir)
    rows = []
    for name, variant in VARIANTS.items():  # the variant first, so that the user's --lora_* flags win
        argv_row = ["--config", args.config, *ROW_FLAGS, *variant, *flags, "--output_dir", str(out / name)]
        rows.append(Row(name, None, argv_row, str(out / name), row_settings(argv_row)))
    for row in rows:
        print(f"{row.name}: training ({log_file(row)}) ...", flush=True)
        if run_row(row, env).status != "ok":
            print(f"    {row.name}: FAILED: {row.reason}", flush=True)
    columns = [c for c in COLUMNS if c != "Peak GPU memory" or any(r.metrics.get("peak_gpu_memory_mb") for r in rows)]
    shown = " ".join(hide_secrets(flags))
    table = markdown_table(columns, [[comparison_row(r)[c] for c in columns] for r in rows])
    write_text(out / "comparison.md", "\n".join([
        "# LoRA vs. training the last block", "",
        f"Same data, seed and recipe ({Path(args.config).name}); flags: `{shown or '(none)'}`.", "", table,
        "", "Trainable parameters are those the optimizer updates; the share is of every parameter in the trained "
        "model (LoRA's matrices included). Wall time is the whole process (start-up, data, training, evaluation, "
        "saving); training time is Trainer's loop. Peak memory is the process's peak resident set size"
        + ("; peak GPU memory is PyTorch's peak allocation." if "Peak GPU memory" in columns else "."), ""]))
    write_json(out / "comparison.json", {"config": args.config, "flags": shown, "rows": [public(r) for r in rows]})
    if all(r.status == "ok" for r in rows):
        plot_comparison(rows, out / "comparison.png")
    print(f"\n{table}\n\nWrote {out}/comparison.md, comparison.json" + (", comparison.png" if all(
        r.status == "ok" for r in rows) else ""))
    if failed := [f"{r.name}: {r.reason}" for r in rows if r.status != "ok"]:
        print("error: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
