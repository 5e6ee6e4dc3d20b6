"""FlexBERT: ModernBERT-style encoders assembled from registries and pretrained with Composer.

The package is layered; each room imports only rooms below it (docs/architecture.md):
ground (errors, registry, config, plugins, commands) -> data -> model -> runtime -> io ->
finetune -> evaluation -> train -> sweep, interop -> cli.
"""

from flexbert import _aliases

__version__ = "0.2.0"

_aliases.install()  # 0.1's import paths keep working, with a FutureWarning, until 0.3
