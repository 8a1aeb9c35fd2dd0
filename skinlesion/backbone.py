"""The network's backbone: what the project needs of a timm backbone and what it says of itself (a head that is
an average pool and one linear layer on the final feature map, which the evidence map, the ONNX file's 'cam' and
the familiarity score read; the width and stride of that map; its convolutions, which an ONNX export of it must
show), and its ImageNet weights: from a local file (offline, checked to fit the network tensor by tensor), or from
the Hugging Face hub or its cache. Whether the hub answers is found out in a moment, instead of after the hub
client's own retries (about 46 s offline), and a failure is one warning: the model then starts from random weights."""

import io
import os
import socket
import sys
import threading
from urllib.parse import urlparse

from skinlesion import reading
from skinlesion.files import file_kind
from skinlesion.messages import UserError, printable, warn


def pooled_linear_head(net):
    """Whether net's head is what Grad-CAM here assumes: the final feature map averaged, then one linear layer."""
    import torch
    from timm.layers import SelectAdaptivePool2d

    pool, head = getattr(net, "global_pool", None), net.get_classifier()
    pooled = isinstance(pool, SelectAdaptivePool2d) and pool.pool_type == "avg"
    return pooled and isinstance(head, torch.nn.Linear) and head.in_features == net.num_features


def network_shape(net):
    """What an ONNX export of net must show, from the network itself: its architecture, the width of its final
    feature map (the classifier's input), the map's stride, and its convolutions (one Conv node each)."""
    import torch

    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    features, stride = net.get_classifier().in_features, net.feature_info[-1]["reduction"]
    return dict(architecture=net.pretrained_cfg["architecture"], features=features, stride=stride, convs=convs)


def cam_side(size, stride=32):
    """The side of the evidence map ('cam') of a model for size x size photos whose final feature map has the given
    stride: each stride-2 stage gives ceil(n / 2), which is size // stride only for multiples of it (48 px gives
    2, not 1)."""
    while stride > 1:
        size, stride = (size + 1) // 2, stride // 2
    return size


HUB = "https://huggingface.co"  # where the weights come from (HF_ENDPOINT overrides it)
MAX_WEIGHTS_BYTES = 2_000_000_000  # the largest weights file read (EfficientNet-B0's: 21 MB)


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


def hub_source(name):
    """Where timm fetches the default ImageNet weights of architecture name, e.g. timm/efficientnet_b0.ra_in1k."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return (cfg and cfg.hf_hub_id) or f"timm/{name}"


def read_weights(path):
    """The tensors of a weights file (safetensors, or a torch file read with weights_only: a file that would run
    code is refused), unwrapped from a {'state_dict': ...} or {'model': ...} checkpoint."""
    import torch

    data = reading.read_bytes(path, MAX_WEIGHTS_BYTES)  # a regular file only, bounded
    if path.endswith(".safetensors"):
        from safetensors.torch import load

        tensors = load(data)
    else:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(tensors, dict) and isinstance(tensors.get(key), dict):
            tensors = tensors[key]
    if not isinstance(tensors, dict) or not all(torch.is_tensor(v) for v in tensors.values()):
        raise ValueError("not a table of tensors")
    return tensors


def counters(net):
    """The names of net's BatchNorm step counters (num_batches_tracked): a count of training steps, not a learned
    or running value; converted and published weights often leave them out, and PyTorch's own strict load of a
    plain table of tensors accepts that."""
    import torch

    norms = [name for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return set(net.state_dict()) & {f"{name}.num_batches_tracked" for name in norms}


def body(net):
    """net's tensors that hold learned or running values, by name: all but its classifier's (which starts new, for
    the dataset's classes) and the BatchNorm step counters."""
    head = net.pretrained_cfg.get("classifier", "classifier")
    skipped = counters(net)
    return {k: v for k, v in net.state_dict().items() if not k.startswith(head + ".") and k not in skipped}


def misfit(wanted, tensors):
    """What of the wanted tensors a weights file does not fill: (names missing, names of another shape)."""
    missing = [k for k in wanted if k not in tensors]
    other_shape = [k for k in wanted if k in tensors and tensors[k].shape != wanted[k].shape]
    return missing, other_shape


def load_weights_file(net, name, path):
    """Fill net (classifier aside) from the weights file at path, every tensor that holds a learned or running value
    or none: a file of another architecture dies with the counts (BatchNorm's step counters, counts and not values,
    start at 0). What the model file records of it: its name and SHA-256."""
    from skinlesion.files import file_sha256

    try:
        tensors = read_weights(path)
    except reading.Unreadable as e:  # its message names the file and says what it is (too large, a device...)
        raise UserError(f"{e}; use the weights of {hub_source(name)}") from None
    except Exception as e:
        raise UserError(
            f"could not load ImageNet weights from {printable(path)} ({type(e).__name__}); use the weights of "
            f"{hub_source(name)}"
        ) from None
    wanted = body(net)
    missing, other_shape = misfit(wanted, tensors)
    if missing or other_shape:
        raise UserError(
            f"weights file {printable(path)} does not fit {name}: of its {len(wanted)} tensors (the classifier and the "
            f"step counters aside) {len(missing)} are missing and {len(other_shape)} have another shape; use the "
            f"weights of {hub_source(name)}"
        )
    net.load_state_dict({k: tensors[k] for k in wanted}, strict=False)
    return dict(file=os.path.basename(path), sha256=file_sha256(path))


def imagenet_model(create, name, weights_file=None, pretrained=True):
    """(create(pretrained) with ImageNet weights when it can, where they came from or None): weights_file, the
    weights of name (e.g. the model.safetensors of timm/efficientnet_b0.ra_in1k) loaded offline, must fit every
    tensor but the classifier; else timm's own download. Where they came from: {source: hub id} or {file, sha256}."""
    if weights_file:
        kind = file_kind(weights_file)
        if kind == "missing":
            raise UserError(
                f"weights file {printable(weights_file)} not found; download it with 'hf download {hub_source(name)}' "
                "or set WEIGHTS_FILE = None"
            )
        if kind:
            raise UserError(
                f"weights file {printable(weights_file)} is {kind}, not a file of weights; pass the file itself"
            )
        net = create(False)
        return net, load_weights_file(net, name, weights_file)
    if pretrained:
        offline_unless_reachable()
        try:
            return create(True), dict(source=hub_source(name))
        except UserError:  # create's own refusal (a head the evidence map cannot use), not a failed download
            raise
        except Exception as e:
            warn(
                f"could not fetch ImageNet weights for {name} ({type(e).__name__}: no network?), training from random "
                f"weights, which needs far more data. Fix: point WEIGHTS_FILE (--weights-file) at a local copy from "
                f"'hf download {hub_source(name)}', or set PRETRAINED = False (--no-pretrained) to silence this."
            )
    return create(False), None
