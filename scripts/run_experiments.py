"""Regenerate the chapter's experiment table: one training job per row of configs/experiments/.

    python scripts/run_experiments.py configs/experiments --quick --data_file SMSSpamCollection
    python scripts/run_experiments.py configs/experiments --only last_block,lora,first_token
    python scripts/run_experiments.py configs/experiments --model_name_or_path LOCAL_GPT2_DIR

Writes OUTPUT_DIR/results.md, results.csv and results.json (default runs/experiments[-quick]),
each row's run (logs, metrics, plots) under OUTPUT_DIR/NAME. Flags not listed in --help go to
every row's scripts/train.py. The work is done by hf_spam.experiments.run_experiments.
"""

from pathlib import Path

from hf_spam.experiments import run_experiments_main

if __name__ == "__main__":
    run_experiments_main(default_experiments_dir=Path(__file__).resolve().parents[1] / "configs" / "experiments")
