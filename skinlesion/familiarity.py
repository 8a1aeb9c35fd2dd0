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

The covariance is kept small: with C = V diag(l) V^T, its RANK largest eigenpairs and, for the other d - RANK
directions, the mean l_f of their eigenvalues (the precision floor = 1 / l_f), so that with x = f - mean
    distance^2 = floor |x|^2 - |x W|^2,   W = V_RANK diag(sqrt(floor - 1 / l_i))  (d x RANK, floor >= 1 / l_i),
one d x RANK matrix and a number instead of d x d (in the ONNX file the page downloads: 4.6 MB at RANK 640
instead of 12.8 MB for d 1792; in float32 the subtraction moved a distance by 7e-6 of it at most, measured). It
is exact where the other eigenvalues are equal (Ledoit-Wolf's shrinkage floor, past the rank of the sample
covariance: fewer photos than RANK), else an approximation whose limit is chosen on the same validation
distances. RANK is the smallest measured that changed no photo's familiar/unfamiliar decision further than 5% of
the limit from it (quantise.py's band) on the real sample (Lite0, 1400 training photos: val, test, drawings,
non-lesions; 512 sufficed there; at 640 the distances moved by 3%, 7% at most) and on gaussian features with
its spectrum and 5000 > d training photos (576 did not); docs/measurements.md.

The model file keeps the class means, the whitening matrix W and its floor (a file from before the floor keeps a
full d x d W, W^T C W = I, distance |x W|: floor 0) and the limit; AItraining.py fits them, the ONNX graph computes
the distance (export_onnx.py), and predict.py, evaluate.py and the web page compare it with the limit.

    means, whitening, floor = familiarity.fit(train_features, train_labels, n_classes)
    limit = familiarity.choose_limit(familiarity.distances(val_features, means, whitening, floor))
"""

import numpy as np

QUANTILE = 0.99  # share of the validation photos within the limit
RANK = 640  # eigenpairs of the covariance kept, >= 1 (the others share their mean; >= d: all of them, exact)
ARRAYS = ("means", "whitening", "floor")  # the measure's arrays in a checkpoint, in meta["familiarity"] once loaded
MAX_PHOTOS = 20_000  # photos of each split the measure is fitted on at most (a seeded sample): bounded memory


def fit(features, labels, n_classes, rank=None):
    """(class means (n_classes, d), whitening (d, k), floor), float64, from training features (n, d) and their class
    indices: the shared covariance C of the features around their class means, shrunk by Ledoit-Wolf, kept as its
    rank (RANK) largest eigenpairs and the mean of the others (see distances). Where rank >= d: the full whitening
    (d, d), W^T C W = I, and floor 0."""
    from sklearn.covariance import LedoitWolf

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    means = np.stack([features[labels == c].mean(0) for c in range(n_classes)])
    covariance = LedoitWolf(assume_centered=True).fit(features - means[labels]).covariance_
    values, vectors = np.linalg.eigh(covariance)  # ascending
    values = np.maximum(values, values.max() * 1e-12)
    rank = RANK if rank is None else rank
    if rank >= len(values):
        return means, vectors / np.sqrt(values), 0.0
    values, vectors = values[::-1], vectors[:, ::-1]  # descending
    floor = 1 / values[rank:].mean()  # the precision of every direction but the top rank ones
    return means, vectors[:, :rank] * np.sqrt(np.maximum(floor - 1 / values[:rank], 0)), float(floor)


def distances(features, means, whitening, floor=0.0):
    """The Mahalanobis distance of each row of features (n, d) to the nearest class mean, float64 (n,): with x = f -
    mean, sqrt(floor |x|^2 - |x W|^2) for a whitening (d, k) with a floor, sqrt(|x W|^2) for a full one (floor 0)."""
    features = np.asarray(features, dtype=np.float64)
    centred = features[:, None, :] - np.asarray(means)[None]
    squared = ((centred @ np.asarray(whitening)) ** 2).sum(-1)
    if float(floor):
        squared = float(floor) * (centred**2).sum(-1) - squared
    return np.sqrt(np.maximum(squared, 0).min(1))


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
    """(meta["familiarity"], means, whitening, floor) for a trained net: fitted on the training photos' features, the
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
    arrays = fit(train_features, train_y, len(meta["classes"]))
    val_distances = distances(features_of_photos(net, val_paths, meta, blobs=val_blobs, **load), *arrays)
    image_types = meta.get("data", {}).get("factors", {}).get("image type", {}).get("train", {})
    return summary(val_distances, sorted(t for t in image_types if t != "unknown")), *arrays


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


def torch_distances(found, means, whitening, floor=0.0):
    """distances() in torch: float32 in a graph, as exported to ONNX (floor a number: a constant of the graph)."""
    centred = found[:, None, :] - means[None]
    squared = (centred @ whitening).square().sum(-1)
    if floor:
        squared = floor * centred.square().sum(-1) - squared
    return squared.clamp(min=0).amin(1).sqrt()


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
    """What is wrong with a checkpoint's familiarity arrays (means: classes x d; whitening: d x k, 1 <= k <= d, and
    d x d without a floor; floor, where there is one: a finite number >= 0; all finite), or None."""
    import torch

    means, whitening = (arrays.get(k) if isinstance(arrays, dict) else None for k in ("means", "whitening"))
    if not (torch.is_tensor(means) and torch.is_tensor(whitening) and means.ndim == 2 and whitening.ndim == 2):
        return "its familiarity has no means and whitening matrices"
    d, floor = means.shape[1], arrays.get("floor", torch.tensor(0.0))  # a file before the floor: a full whitening
    if means.shape[0] != classes or whitening.shape[0] != d or not 1 <= whitening.shape[1] <= d:
        return f"its familiarity means {tuple(means.shape)} and whitening {tuple(whitening.shape)} do not fit"
    if not (means.isfinite().all() and whitening.isfinite().all()):
        return "its familiarity means or whitening hold NaN or infinite values"
    if not (torch.is_tensor(floor) and floor.numel() == 1 and floor.isfinite().all() and (floor >= 0).all()):
        return "its familiarity floor is not one finite number >= 0"
    if float(floor) == 0 and whitening.shape[1] != d:
        return f"its familiarity whitening {tuple(whitening.shape)} has no floor: it must be {d} x {d}"
    return None


def state(means, whitening, floor=0.0):
    """What a checkpoint keeps of its familiarity measure besides meta["familiarity"]: the arrays, float32."""
    import torch

    return {
        key: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        for key, v in (("means", means), ("whitening", whitening), ("floor", floor))
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
    return distances_to(found_features.double().cpu().numpy(), meta)


def distances_to(features, meta):
    """distances() of each row of features (n, d) with the model file's measure (meta as load_checkpoint gives it,
    with the arrays)."""
    found = meta["familiarity"]
    arrays = found["means"], found["whitening"], found.get("floor", 0.0)  # no floor: a file with a full whitening
    return distances(features, *arrays)


def unfamiliar_text(distance, meta, shown):
    """The line that says why an unfamiliar photo gets no answer (or, shown, an unreliable one)."""
    limit = meta["familiarity"]["limit"]
    why = f"{unfamiliar_sentence(meta)} (familiarity distance {distance:.2f}, limit {limit:.2f})"
    if shown:
        return f"{why}; the answer below is unreliable"
    return f"{why}: no benign/malignant answer (--show-unfamiliar shows it anyway, unreliable)"
