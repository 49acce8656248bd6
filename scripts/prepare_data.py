"""Write the chapter's train/validation/test CSV files of the SMS Spam Collection (``hf-spam prepare-data``).

    python scripts/prepare_data.py [--data_file FILE] [--cache_dir DIR] [--output_dir data] [--natural_balance]
"""

import sys

from hf_spam.cli import main

if __name__ == "__main__":
    main(["prepare-data", *sys.argv[1:]])
