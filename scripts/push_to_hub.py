"""Push a model folder written by training to the Hugging Face Hub.

    python scripts/push_to_hub.py runs/gpt2-small --repo_id YOUR_NAME/gpt2-sms-spam [--private] [--token T]

The token comes from --token, else $HF_TOKEN, else `hf auth login`. Trainer checkpoints, runs/ and
logs are not uploaded. Errors are one line on stderr (exit 2: bad folder or repo id; 1: Hub failure).
"""

from hf_spam.hub import main

if __name__ == "__main__":
    main()
