"""``python -m keras_siamese.data``: recompute which evaluation alphabets Lake's runs use."""

import argparse

from keras_siamese.data.split import ALPHABETS_FILE, write_alphabet_file

parser = argparse.ArgumentParser(
    prog="python -m keras_siamese.data",
    description="Recompute which evaluation alphabets Lake's one-shot runs use and rewrite "
    f"{ALPHABETS_FILE.name}.",
)
parser.add_argument("--data-dir", help="folder holding the Omniglot zips")
arguments = parser.parse_args()
result = write_alphabet_file(arguments.data_dir)
print(f"wrote {ALPHABETS_FILE}")
print("test (Lake's runs):", ", ".join(result["lake_test_alphabets"]))
print("validation:       ", ", ".join(result["validation_alphabets"]))
