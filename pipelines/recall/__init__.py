"""Recall suite: synthetic long-context recall tasks (MQAR, induction heads, selective
copying, passkey, multi-key needle, variable tracking) for backbones with and without
streaming memory. See README.md.
"""

DOMAIN = "recall"
