"""Config schemas (schema.py) and the OmegaConf resolvers our YAML files use.

`${cwd:}` is the directory the command was started from. (Hydra's `${hydra:runtime.cwd}` is not available when
the launcher resolves `hydra.sweep.dir`, so paths must not depend on it.)
"""

import os

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", os.getcwd)
