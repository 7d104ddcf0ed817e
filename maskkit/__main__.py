# Written by hand, like __init__.py (nbdev generates the modules, not this entry point): `python -m maskkit ...` and
# `torchrun --nproc_per_node N -m maskkit train ...` run the `maskkit` command of maskkit.cli (nbs/09_cli.ipynb).
import sys
from maskkit.cli import main

sys.exit(main())
