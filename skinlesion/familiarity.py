"""How familiar a photo is to a model: whether it looks like the photos the model learned from. The measure is
the Mahalanobis distance of the photo's features to the nearest class mean of the training photos, with one
covariance shared by the classes, shrunk towards a multiple of the identity (Ledoit-Wolf: a few hundred photos
cannot estimate a 1792 x 1792 covariance alone). The features: the pooled features (what the network computes
just before its classifier, 1280 for EfficientNet-B0) and the spatial mean of each stage's output (16 + 24 + 40
+ 112 + 320), timm's forward_intermediates, so any timm backbone. The stages see what the classifier may ignore:
on frozen ImageNet features (the Lite0 stand-in) fitted on the demo's drawings, the pooled features alone flagged
52% of 46 plainly non-lesion images (flat colours, text, charts...), with the stages all of them, and 4.8% of the
own test photos (tools/measure_familiarity.py measures a trained model).
Its limit is a quantile (QUANTILE, 99%) of the distances of the validation photos, which the fit never saw: a
photo further than that is unfamiliar, and gets no benign/malignant answer. Past MAX_PHOTOS photos in a split, a
seeded sample of that many is used (1792 x 1792 covariance entries are well estimated from 20,000 photos), so the
fit's memory stays bounded on the whole archive.

The model file keeps the class means, a whitening matrix W (W^T C W = I for the shared covariance C, so that
the distance is |(f - mean) W|) and the limit; AItraining.py fits them, the ONNX graph computes the distance
(export_onnx.py), and predict.py, evaluate.py and the web page compare it with the limit.

    means, whitening = familiarity.fit(train_features, train_labels, n_classes)
    limit = familiarity.choose_limit(familiarity.distances(val_features, means, whitening))
"""

import numpy as np

QUANTILE = 0.99  # share of the validation photos within the limit
MAX_PHOTOS = 20_000  # photos of each split the measure is fitted on at most (a seeded sample): bounded memory


def fit(features, labels, n_classes):
    """(class means (n_classes, d), whitening matrix (d, d)), float64, from training features (n, d) and their
    class indices: the shared covariance of the features around their class means, shrunk by Ledoit-Wolf."""
    from sklearn.covariance import LedoitWolf

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    means = np.stack([features[labels == c].mean(0) for c in range(n_classes)])
    covariance = LedoitWolf(assume_centered=True).fit(features - means[labels]).covariance_
    values, vectors = np.linalg.eigh(covariance)
    return means, vectors / np.sqrt(np.maximum(values, values.max() * 1e-12))


def distances(features, means, whitening):
    """The Mahalanobis distance of each row of features (n, d) to the nearest class mean, float64 (n,)."""
    features = np.asarray(features, dtype=np.float64)
    whitened = (features[:, None, :] - np.asarray(means)[None]) @ np.asarray(whitening)
    return np.sqrt((whitened**2).sum(-1).min(1))


def choose_limit(val_distances, quantile=QUANTILE):
    """The distance QUANTILE of the validation photos lie within (numpy's linear quantile)."""
    return float(np.quantile(np.asarray(val_distances, dtype=np.float64), quantile))


def summary(val_distances, image_types, quantile=QUANTILE):
    """What the model file's meta keeps: the limit (chosen on the validation distances), how it was chosen, the
    share of the validation photos within it, and the image types it applies to."""
    limit = choose_limit(val_distances, quantile)
    within = float(np.mean(np.asarray(val_distances) <= limit))
    found = dict(method="mahalanobis", limit=limit, quantile=quantile, val_within=within, n_val=len(val_distances))
    return dict(found, image_types=image_types)


def sampled(n, most=None, seed=0):
    """The indices of the photos the measure is fitted on: all n, or a seeded sample of most (MAX_PHOTOS), sorted."""
    most = MAX_PHOTOS if most is None else most
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def fit_on_photos(net, meta, data_dir, train_paths, train_y, val_paths, **load):
    """(meta["familiarity"], means, whitening) for a trained net: fitted on the training photos' features, the
    limit chosen on the validation photos' (load: features_of_photos' device, batch_size, num_workers). The
    photos of a dataset of shards are read from its shards."""
    from skinlesion import shards

    train = sampled(len(train_paths))
    train_paths, train_y = [train_paths[i] for i in train], np.asarray(train_y)[train]
    val_paths = [val_paths[i] for i in sampled(len(val_paths))]
    on_shards = shards.is_shards(data_dir)  # on a disk or in an object store; a folder's photos are read as files
    train_blobs, val_blobs = None, None
    if on_shards:  # only the sampled photos' bytes are kept
        train_blobs, val_blobs = (shards.read_blobs(data_dir, split, set(p)) for split, p in
                                  (("train", train_paths), ("val", val_paths)))  # fmt: skip
    train_features = features_of_photos(net, train_paths, meta, blobs=train_blobs, **load)
    means, whitening = fit(train_features, train_y, len(meta["classes"]))
    val_distances = distances(features_of_photos(net, val_paths, meta, blobs=val_blobs, **load), means, whitening)
    image_types = meta.get("data", {}).get("factors", {}).get("image type", {}).get("train", {})
    return summary(val_distances, sorted(t for t in image_types if t != "unknown")), means, whitening


def limit_text(found):
    """The limit in words, as training prints it."""
    return (
        f"a photo further than {found['limit']:.2f} from the training photos (the Mahalanobis distance of its "
        f"features to the nearest class mean; {found['val_within']:.0%} of the {found['n_val']} validation photos "
        "lie within) is unfamiliar and gets no answer"
    )


def unfamiliar(distance, meta):
    """Whether a photo at this distance is unfamiliar to the model (False for a model without the measure)."""
    found = meta.get("familiarity")
    return bool(found) and not distance <= found["limit"]  # NaN counts as unfamiliar


def image_types_text(meta):
    """The training photos' image types for a sentence: 'clinical: overview', or 'dermoscopic or clinical: ...'."""
    types = (meta.get("familiarity") or {}).get("image_types") or []
    return " or ".join(types) if types else "training"


def unfamiliar_sentence(meta):
    """What predict.py and the page say instead of an answer for an unfamiliar photo."""
    return f"the photo does not look like the {image_types_text(meta)} photos the model learned from"


# ---------------------------------------------------------------------------- in torch (the model, the ONNX graph)
def features(net, x):
    """(the familiarity features (n, d) of a batch of normalised images, the network's final feature map, as
    forward_features gives it: its head and the cam use it) from one pass through a timm network."""
    import torch

    final, stages = net.forward_intermediates(x, intermediates_only=False)
    pooled = net.forward_head(final, pre_logits=True)
    return torch.cat([stage.mean((2, 3)) for stage in stages] + [pooled], 1), final


def feature_count(net):
    """How many familiarity features a timm network gives: its stages' channels and its pooled features."""
    return sum(info["num_chs"] for info in net.feature_info) + net.num_features


def torch_distances(found, means, whitening):
    """distances() in torch: float32 in a graph, as exported to ONNX."""
    import torch

    whitened = (found[:, None, :] - means[None]) @ whitening
    return torch.sqrt(whitened.square().sum(-1).amin(1))


def features_of_photos(net, paths, meta, device, batch_size=32, num_workers=0, blobs=None):
    """The familiarity features (n, d), float64, of the photos' centre crops (as the model file's meta makes them), in
    eval mode. An unreadable photo is an error (the caller checked them)."""
    import torch

    from skinlesion import photos

    crops = photos.Photos(list(paths), meta["image_size"], meta["crop_pct"], meta["interpolation"], blobs)
    order = [list(range(i, min(i + batch_size, len(crops)))) for i in range(0, len(crops), batch_size)]
    found = []
    net.eval()
    with torch.inference_mode():
        for x, whys in photos.photo_loader(crops, order, num_workers, device):
            if any(whys):
                raise OSError(f"a photo could not be read: {next(w for w in whys if w)}")
            x = photos.normalise_batch(x.to(device), meta)
            found.append(features(net, x)[0].double().cpu().numpy())
    return np.concatenate(found)


def arrays_fault(arrays, classes):
    """What is wrong with a checkpoint's familiarity arrays (means: classes x d, whitening: d x d, finite)."""
    import torch

    means, whitening = (arrays.get(k) if isinstance(arrays, dict) else None for k in ("means", "whitening"))
    if not (torch.is_tensor(means) and torch.is_tensor(whitening) and means.ndim == 2 and whitening.ndim == 2):
        return "its familiarity has no means and whitening matrices"
    d = means.shape[1]
    if means.shape[0] != classes or tuple(whitening.shape) != (d, d):
        return f"its familiarity means {tuple(means.shape)} and whitening {tuple(whitening.shape)} do not fit"
    if not (means.isfinite().all() and whitening.isfinite().all()):
        return "its familiarity means or whitening hold NaN or infinite values"
    return None


def state(means, whitening):
    """What a checkpoint keeps of its familiarity measure besides meta["familiarity"]: the arrays, float32."""
    import torch

    return {
        key: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        for key, v in (("means", means), ("whitening", whitening))
    }


def distances_of(net, x, meta):
    """The familiarity distance of each normalised image of a batch, float64, or None
    for a model without the measure (meta as load_checkpoint gives it, with the arrays)."""
    import torch

    found = meta.get("familiarity")
    if not found:
        return None
    with torch.inference_mode():
        found_features = features(net, x.contiguous(memory_format=torch.channels_last))[0]
    return distances(found_features.double().cpu().numpy(), found["means"], found["whitening"])


def unfamiliar_text(distance, meta, shown):
    """The line that says why an unfamiliar photo gets no answer (or, shown, an unreliable one)."""
    limit = meta["familiarity"]["limit"]
    why = f"{unfamiliar_sentence(meta)} (familiarity distance {distance:.2f}, limit {limit:.2f})"
    if shown:
        return f"{why}; the answer below is unreliable"
    return f"{why}: no benign/malignant answer (--show-unfamiliar shows it anyway, unreliable)"
