"""The chapter's sanity checks: pretrained GPT-2 continues "Every effort moves you" and meets the zero-shot
spam prompt (``hf-spam sanity``).

    python scripts/sanity_check.py [--model_name_or_path openai-community/gpt2|LOCAL_DIR] [--bpe_dir DIR]
"""

import sys

from hf_spam.cli import main

if __name__ == "__main__":
    main(["sanity", *sys.argv[1:]])
