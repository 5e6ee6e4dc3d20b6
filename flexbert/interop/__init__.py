"""Bridges from other training code bases (the ModernBERT research repository) into FlexBERT."""
