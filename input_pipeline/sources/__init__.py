"""The built-in data sources; each registers itself (`input_pipeline.registry.register_source`) in its file.

Importing this package registers them in this order, the order in which error messages list them.
"""

import importlib

BUILTIN = ("tfds", "folder", "digits", "arrays", "files")

for _name in BUILTIN:
    importlib.import_module(f"input_pipeline.sources.{_name}")
