"""Fine-tune GPT-2 as an SMS spam classifier (the chapter's job) with transformers' Trainer.

    python scripts/train.py --config configs/tiny.yaml --output_dir runs/tiny [--flag value ...]
    accelerate launch scripts/train.py --config configs/seed.yaml --output_dir runs/seed

Every field of ModelArguments, DataArguments (hf_spam/training.py) and transformers'
TrainingArguments is a flag; --config FILE.yaml gives defaults that later flags override.
The steps (data, model, Trainer, train, evaluate, save, plots, push) live in hf_spam.training.run.
"""

from hf_spam.training import main

if __name__ == "__main__":
    main()
