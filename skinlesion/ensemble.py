"""The folds' networks averaged, as one network (AItraining.py --deploy ensemble): its logits are the mean of the
members', its final feature map theirs side by side and its head an average pool and one linear layer (their heads
side by side, divided by their number). So the evidence map is the mean of their maps, the familiarity features
are theirs side by side, and the ONNX export is one graph with the same outputs."""


def from_weights(name, n_classes, weights):
    """The ensemble of networks of a timm name, one per state dict in weights, averaged."""
    import timm

    members = [timm.create_model(name, pretrained=False, num_classes=n_classes) for _ in weights]
    for member, state in zip(members, weights):
        member.load_state_dict(state)
    return averaged(members)


def network(name, n_classes, members=1):
    """A timm name's network for n_classes (random weights, to be loaded), or an ensemble of members of them."""
    import timm

    found = [timm.create_model(name, pretrained=False, num_classes=n_classes) for _ in range(members)]
    return averaged(found) if members > 1 else found[0]


def averaged(members):
    """The members (timm networks of one architecture and classes) as one network whose logits are the mean of
    theirs: its final feature map is theirs side by side, its head an average pool and one linear layer (their
    heads side by side, divided by their number), so that the evidence map is the mean of their maps and the
    familiarity features are theirs side by side; what a timm network offers the rest of the project
    (forward_features, forward_head, forward_intermediates, get_classifier, feature_info, num_features) it offers."""
    import copy

    import torch

    class Ensemble(torch.nn.Module):
        def __init__(self):
            super().__init__()
            first, n = members[0], len(members)
            self.members = torch.nn.ModuleList(members)
            self.global_pool = copy.deepcopy(first.global_pool)
            self.num_features = n * first.num_features
            self.feature_info = [dict(info, num_chs=n * info["num_chs"]) for info in first.feature_info]
            self.pretrained_cfg = first.pretrained_cfg
            heads = [member.get_classifier() for member in members]
            self.classifier = torch.nn.Linear(self.num_features, heads[0].out_features)
            with torch.no_grad():
                self.classifier.weight.copy_(torch.cat([head.weight for head in heads], 1) / n)
                self.classifier.bias.copy_(torch.stack([head.bias for head in heads]).mean(0))

        def get_classifier(self):
            return self.classifier

        def forward_features(self, x):
            return torch.cat([member.forward_features(x) for member in self.members], 1)

        def forward_intermediates(self, x, intermediates_only=False, **options):
            found = [member.forward_intermediates(x, intermediates_only=intermediates_only, **options)
                     for member in self.members]  # fmt: skip
            stages = found if intermediates_only else [f[1] for f in found]
            joined = [torch.cat(maps, 1) for maps in zip(*stages)]
            return joined if intermediates_only else (torch.cat([f[0] for f in found], 1), joined)

        def forward_head(self, x, pre_logits=False):
            pooled = self.global_pool(x)
            return pooled if pre_logits else self.classifier(pooled)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    return Ensemble()
