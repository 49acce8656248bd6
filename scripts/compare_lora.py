"""Compare LoRA with training the last block: same recipe, data and seed; cost and accuracy side by side.

    python scripts/compare_lora.py --weights random --model_size tiny \
        --data_file ../shared/data/sms_spam_collection/SMSSpamCollection --output_dir runs/compare_lora

Both runs start from configs/seed.yaml (or --config FILE) plus the flags given (any flag of
scripts/train.py); LoRA uses rank 16 and peft's lora_alpha 256 (the chapter's alpha 16) unless
--lora_rank/--lora_alpha say otherwise. Writes OUTPUT_DIR/comparison.md, .json and .png; each run
stays under OUTPUT_DIR/last_block and OUTPUT_DIR/lora. The work is done by hf_spam.experiments.
"""

from pathlib import Path

from hf_spam.experiments import compare_lora_main

if __name__ == "__main__":
    compare_lora_main(default_config=Path(__file__).resolve().parents[1] / "configs" / "seed.yaml")
