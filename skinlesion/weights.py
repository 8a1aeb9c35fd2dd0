"""ImageNet weights for a timm model: from a local file (offline), or from the Hugging Face hub or its cache.
Whether the hub answers is found out in a moment, instead of after the hub client's own retries (about 46 s
offline), and a failure is one warning: the model then starts from random weights."""

import os
import socket
import sys
import threading
from urllib.parse import urlparse

from skinlesion.cli import die, warn

HUB = "https://huggingface.co"  # where the weights come from (HF_ENDPOINT overrides it)


def hub_reachable(seconds=1.5):
    """Whether the weights' host (or the HTTPS proxy in between) accepts a connection within seconds."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", HUB))
    answered = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=seconds).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a DNS lookup can outlast the socket timeout
    thread.start()
    thread.join(seconds + 0.5)
    return bool(answered)


def use_cache_only():
    """Make the hub client use only its local cache (whether or not huggingface_hub is imported yet)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def offline_unless_reachable():
    """Go cache-only when the hub does not answer (unless HF_HUB_OFFLINE already decides): the cache may still
    hold the weights; if not, loading them fails in a moment."""
    if not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable():
        use_cache_only()


def imagenet_model(create, name, weights_file=None, pretrained=True):
    """(create(pretrained, overlay) with ImageNet weights when it can, whether it has them). weights_file: the
    model.safetensors or pytorch_model.bin of timm/<name>.ra_in1k, loaded offline; a missing or wrong one dies."""
    source = f"timm/{name}.ra_in1k"
    if weights_file:
        if not os.path.isfile(weights_file):
            die(
                f"weights file {weights_file} not found; download it with 'hf download {source}' "
                "or set WEIGHTS_FILE = None"
            )
        try:
            return create(True, dict(file=os.path.abspath(weights_file))), True
        except Exception as e:
            die(
                f"could not load ImageNet weights from {weights_file} ({type(e).__name__}); use the weights of {source}"
            )
    if pretrained:
        offline_unless_reachable()
        try:
            return create(True, None), True
        except Exception as e:
            warn(
                f"could not fetch ImageNet weights for {name} ({type(e).__name__}: no network?), training from random "
                f"weights, which needs far more data. Fix: point WEIGHTS_FILE (--weights-file) at a local copy from "
                f"'hf download {source}', or set PRETRAINED = False (--no-pretrained) to silence this."
            )
    return create(False, None), False
