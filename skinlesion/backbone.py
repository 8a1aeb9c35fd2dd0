"""What the project needs of a timm backbone, and what it says of itself: a head that is an average pool and one
linear layer on the final feature map (the evidence map, the ONNX file's 'cam' and the familiarity score read
that map), the width and stride of that map, and its convolutions (what an ONNX export of it must show)."""


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
