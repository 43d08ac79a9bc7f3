"""Models: the ViT backbone (vit.py) and LT-DPT on top of it (ltdpt.py)."""
