"""Template pipeline: sine-frequency classification on generated data.

A tiny but real pipeline that exercises every part of the shell (CLI verbs, DDP,
checkpoints, hub, Gradio tab). Copy this folder to add a domain; see README.md.
"""

DOMAIN = "template"
