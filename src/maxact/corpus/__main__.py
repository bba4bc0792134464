"""``python -m maxact.corpus`` = ``python -m maxact.corpus.build``: rebuild the study corpus."""

import sys

from maxact.corpus.build import main

if __name__ == "__main__":
    sys.exit(main())
