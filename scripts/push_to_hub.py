"""Push a model folder written by training to the Hugging Face Hub (``hf-spam push``).

    python scripts/push_to_hub.py runs/gpt2-small --repo_id YOUR_NAME/gpt2-sms-spam [--private] [--token T]

The token comes from --token, else $HF_TOKEN, else `hf auth login`. Trainer checkpoints, logs and hidden
files are not uploaded. Errors are one line (exit 2: bad folder or repo id; 3: the Hub refused or is out of reach).
"""

import sys

from hf_spam.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
