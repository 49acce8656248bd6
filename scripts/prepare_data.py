"""Write the chapter's train/validation/test CSV files of the SMS Spam Collection.

Usage: python scripts/prepare_data.py [--data_file FILE] [--cache_dir DIR] [--output_dir DIR] [--natural_balance]
"""

from hf_spam.data import main

if __name__ == "__main__":
    main()
