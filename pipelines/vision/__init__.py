"""Vision pipeline (issue 15): image classification with Vision Mamba on a CPU.

``model.py`` builds the pipeline's models (Vim over the suite's bidirectional Mamba stack,
the timm ViT baseline, sequential-pixel Mamba / S4D) for Fashion-MNIST (IDX) or a user's
ImageFolder directory; ``vim.py`` holds the timm-registered Vim classifier (import
``longstream.pipelines.vision.vim``, then ``timm.create_model("vim_tiny_patch16_224")``);
``vim_convert.py`` converts the released hustvl/Vim checkpoints.
"""

DOMAIN = "vision"
