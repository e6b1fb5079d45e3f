"""Vision pipeline: image classification with Vision Mamba, a timm ViT baseline and
sequential-pixel (one token per pixel) Mamba / S4D models, on Fashion-MNIST (IDX) or a
user's ImageFolder directory.
"""

DOMAIN = "vision"
