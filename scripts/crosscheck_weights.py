"""Cross-check GPT-2's Hugging Face checkpoint against OpenAI's TensorFlow files, tensor by tensor.

    python scripts/crosscheck_weights.py --model_size 124M          # downloads both
    python scripts/crosscheck_weights.py --hf_dir HF_DIR --tf_dir TF_DIR

Prints a markdown table and exits 0 only when every tensor and the logits match (needs the `tf` extra).
"""

from hf_spam.sanity import crosscheck_main

if __name__ == "__main__":
    crosscheck_main()
