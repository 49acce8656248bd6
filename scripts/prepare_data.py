"""Write the chapter's train/validation/test CSV files of the SMS Spam Collection.

Usage: python scripts/prepare_data.py [--data_file FILE] [--cache_dir DIR] [--output_dir DIR] [--natural_balance]
"""

from __future__ import annotations

import argparse
import sys

from hf_spam.data import DataFileError, load_sms_spam, write_splits_csv
from hf_spam.download import ArchiveError, DownloadError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_file", help="local SMSSpamCollection file (default: download from UCI into the cache)")
    parser.add_argument("--cache_dir", help="download cache (default: $HF_SPAM_CACHE or ~/.cache/hf_spam)")
    parser.add_argument("--output_dir", default="data", help="folder for train.csv, validation.csv, test.csv")
    parser.add_argument("--natural_balance", action="store_true",
                        help="keep all messages (stratified split) instead of 747 ham + 747 spam")
    parser.add_argument("--seed", type=int, default=123, help="sampling and shuffling seed (the chapter's 123)")
    args = parser.parse_args(argv)
    try:
        dataset = load_sms_spam(args.data_file, cache_dir=args.cache_dir, balanced=not args.natural_balance,
                                seed=args.seed)
        paths = write_splits_csv(dataset, args.output_dir)
    except (DataFileError, DownloadError, ArchiveError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    for split, path in paths.items():
        print(f"{split}: {dataset[split].num_rows} rows -> {path}")


if __name__ == "__main__":
    main()
