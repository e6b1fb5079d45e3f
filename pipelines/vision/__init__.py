"""Vision pipeline (issue 15): Vision Mamba image classification on a CPU.

``vim.py`` holds the Vim classifier and registers it in timm's model registry (import
``longstream.pipelines.vision.vim``, then ``timm.create_model("vim_tiny_patch16_224")``);
``vim_convert.py`` converts the released hustvl/Vim checkpoints.
"""

DOMAIN = "vision"
