"""Every shipped config parses through scripts/train.py's parser, each experiment row is what it says,
and the accelerate launcher configs load with accelerate's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from conftest import ROOT, peft_alpha_for_chapter
from run_experiments import discover, row_settings

from hf_spam.arguments import parse_args
from hf_spam.errors import HfSpamError

# The recipe's configs; configs/search_space.yaml is the search's space, not a recipe (tests/test_search.py).
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "search_space.yaml")
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
LAUNCHERS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_the_config_folders_are_not_empty():
    assert any(p.name == "seed.yaml" for p in CONFIGS)
    assert len(EXPERIMENTS) >= 12
    assert {p.stem for p in LAUNCHERS} == {"one_process", "cpu_processes", "multi_gpu", "fsdp", "multi_node"}


@pytest.mark.parametrize("path", CONFIGS + EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path: Path, tmp_path):
    model_args, data_args, training_args = parse_args(["--config", str(path), "--output_dir", str(tmp_path)])
    assert training_args.output_dir == str(tmp_path)
    assert model_args.model_size and data_args.padding


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_accelerate_config_loads(path: Path):
    config = load_config_from_file(str(path))
    assert config.num_machines == (2 if path.stem == "multi_node" else 1) and config.mixed_precision in ("no", "bf16")
    if path.stem == "fsdp":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "TransformerBlock"
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if path.stem == "multi_node":  # the fields the user sets are there, for two machines
        assert (config.machine_rank, config.main_process_port) == (0, 29500) and config.main_process_ip
    expected = {"one_process": "NO", "cpu_processes": "MULTI_GPU", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP",
                "multi_node": "MULTI_GPU"}
    assert config.distributed_type.value == expected[path.stem]
    assert not config.use_cpu  # `--cpu`/use_cpu makes accelerate start a single process


# What each row changes relative to the recipe (configs/seed.yaml); the rest must equal the recipe.
ROW_CHANGES = {
    "last_block": {},
    "first_token": {"pooling": "first"},
    "last_layer": {"trainable_layers": "last_layer"},
    "last_two_blocks": {"trainable_layers": "last_two_blocks"},
    "all_layers": {"trainable_layers": "all"},
    "gpt2_medium": {"model_size": "gpt2-medium"},
    "gpt2_large": {"model_size": "gpt2-large"},
    "gpt2_xl": {"model_size": "gpt2-xl"},
    "random_weights": {"weights": "random", "trainable_layers": "all"},
    "lora": {"trainable_layers": "lora", "lora_alpha": peft_alpha_for_chapter(16, 16)},  # rank 16 is the default
    "max_context": {"padding": "max_context"},
    "no_padding_batch1": {"padding": "dynamic", "batch_size": 1},
    "no_padding_accum8": {"padding": "dynamic", "batch_size": 1, "gradient_accumulation_steps": 8},
    "no_causal_mask": {"causal": False},
    "last_non_pad": {"pooling": "last_non_pad"},
    "mean_pooling": {"pooling": "mean"},
    "dynamic_padding": {"padding": "dynamic", "pooling": "last_non_pad"},
}


def test_each_experiment_row_changes_only_what_it_says(tmp_path):
    rows = discover(ROOT / "configs" / "experiments", None)
    assert [name for _, name, _ in rows] == list(ROW_CHANGES)  # file numbers give the chapter's order
    assert [number for number, _, _ in rows] == list(range(1, len(rows) + 1))
    recipe = row_settings(["--config", str(ROOT / "configs" / "seed.yaml"), "--output_dir", str(tmp_path)])
    assert recipe["model_size"] == "gpt2-small" and recipe["weights"] == "pretrained"
    for _, name, path in rows:
        settings = row_settings(["--config", str(path), "--output_dir", str(tmp_path)])
        changed = {k: v for k, v in settings.items() if v != recipe[k]}
        assert changed == ROW_CHANGES[name], name
        if name == "lora":
            assert settings["lora_rank"] == 16 and settings["lora_alpha"] == 256  # the chapter's r=16, alpha=16


def test_include_is_relative_and_the_including_file_wins(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "recipe.yaml").write_text("pooling: first\nlearning_rate: 1.0e-3\n")
    (tmp_path / "row.yaml").write_text("include: base/recipe.yaml\npooling: mean\n")
    model_args, _, training_args = parse_args(["--config", str(tmp_path / "row.yaml"), "--output_dir", "x"])
    assert model_args.pooling == "mean" and training_args.learning_rate == 1e-3
    # and the command line wins over both, wherever --config stands
    model_args, _, _ = parse_args(["--pooling", "last", "--config", str(tmp_path / "row.yaml"), "--output_dir", "x"])
    assert model_args.pooling == "last"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"row.yaml": "include: missing.yaml\n"}, r"row\.yaml: include: .*missing\.yaml not found"),
        ({"row.yaml": "include: row.yaml\n"}, r"row\.yaml: include: row\.yaml includes itself"),
        ({"row.yaml": "include: b.yaml\n", "b.yaml": "include: row.yaml\n"}, "includes itself"),
        ({"row.yaml": "include: [a.yaml]\n"}, r"row\.yaml: include: expected the path"),
        ({"row.yaml": "include: b.yaml\n", "b.yaml": "not_a_flag: 1\n"}, r"b\.yaml: unknown key 'not_a_flag'"),
        ({"row.yaml": "- a list\n"}, r"row\.yaml: expected a mapping"),
        ({"row.yaml": "pooling: [unclosed\n"}, r"row\.yaml: not a readable YAML file"),
    ],
)
def test_bad_includes_are_one_clear_error(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(HfSpamError, match=message):
        parse_args(["--config", str(tmp_path / "row.yaml"), "--output_dir", "x"])
