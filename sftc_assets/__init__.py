"""The stages of the chain, one folder each: plain logic modules plus a thin assets.py."""
