__version__ = "0.1.0"
# Written by hand (nbdev only updates the version line above): keep it light, no heavy imports.
# The torchvision hook must be in place before anything imports torchvision (see nbs/00b_compat.ipynb).
from .compat import install_torchvision_hook as _install_hook
_install_hook()
