"""``python -m fastcnn``: the same command line as the installed ``fastcnn`` command."""
import sys

from fastcnn.cli import main

sys.exit(main())
