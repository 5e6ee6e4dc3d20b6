"""FlexBERT: ModernBERT-style encoders assembled from registries and pretrained with Composer."""

__version__ = "0.1.0"
