"""Reaching the Hugging Face hub: go offline at once where it cannot be reached.

huggingface_hub retries a request that cannot connect five times with back-off, so on a machine
without a network a hub id, ``--data wikitext2`` or a task without local data used to print half
a minute of retry warnings before failing. ``offline_unless_reachable`` resolves the hub's host
name first (milliseconds) and, when that fails, switches this process to offline mode, in which
files already in the local Hugging Face cache still load and anything else fails at once.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def offline_unless_reachable() -> bool:
    """Switch huggingface_hub and datasets to offline mode when the hub's host (``HF_ENDPOINT``)
    does not resolve; returns whether this process is offline. Never raises."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
        return False
    except (OSError, UnicodeError, TypeError):
        pass
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    return True
