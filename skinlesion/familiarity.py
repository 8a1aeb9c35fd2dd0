"""How familiar a photo is to a model: whether it looks like the photos the model learned from. Two views of its
features (features(): each stage's spatial mean and the pooled features), each 1 where QUANTILE of the training
photos lie (out of fold); the photo's distance is the larger. The Mahalanobis distance to the nearest class mean
(skinlesion/mahalanobis.py) catches what lies far from every training photo; an exposure head (Hendrycks et al.,
ICLR 2019: a logistic regression of the training photos against drawn non-lesions, skinlesion/non_lesions.py, and
the dataset's photos of another kind, skinlesion/other_types.py; none without them) catches another kind of photo
close by. The limit: QUANTILE of held-out photos' distances. docs/measurements.md: what each catches, and why.

    limit = familiarity.choose_limit(familiarity.distances(val_features, familiarity.fit(features, y, n, negatives)))
"""

import numpy as np

from skinlesion import mahalanobis

QUANTILE = 0.99  # share of the held-out photos within the limit (and of the training photos within 1 on each view)
MAHALANOBIS = ("means", "whitening", "floor")  # the Mahalanobis view's arrays (floor: none in the first files)
HEAD = ("centre", "scale", "weights", "bias")  # the exposure head's arrays (none in files from before it)
ARRAYS = MAHALANOBIS + HEAD  # the measure's arrays in a checkpoint, in meta["familiarity"] once loaded
MAX_PHOTOS = 20_000  # photos of each split the measure is fitted on at most (a seeded sample): bounded memory
EXPOSURE_C = 0.1  # the head's inverse regularisation strength (scikit-learn's C)
SHRINK = 1.0  # the head divides each feature by sqrt(its variance + SHRINK x the median variance): none blows up
CLIP = 5.0  # and clips it to +-CLIP: one odd feature cannot decide
FOLDS = 4  # the views are scaled on the training photos' scores from fits without them, in this many folds
MADE_PER_KIND = 24  # images of each of non_lesions.KINDS the head learns from
MAX_OTHER_TYPES = 2000  # photos of other image types (skinlesion/other_types.py) the head learns from at most


def standardised(features, centre, scale):
    """What the exposure head reads: (features - centre) / scale, clipped to +-CLIP (numpy or torch alike)."""
    return ((features - centre) / scale).clip(-CLIP, CLIP)


def fit_head(features, negatives):
    """The exposure head (HEAD: centre, scale, weights, bias), float64: a logistic regression of the training photos'
    features (class 0) against the negatives' (class 1), the two weighted equally, on standardised features."""
    from sklearn.linear_model import LogisticRegression

    variance = features.var(0)
    scale = np.sqrt(variance + SHRINK * np.median(variance))
    scale = np.where(scale > 0, scale, 1.0)
    centre = features.mean(0)
    x = standardised(np.concatenate([features, negatives]), centre, scale)
    y = np.r_[np.zeros(len(features)), np.ones(len(negatives))]
    head = LogisticRegression(C=EXPOSURE_C, class_weight="balanced", max_iter=5000).fit(x, y)
    return dict(centre=centre, scale=scale, weights=head.coef_[0].astype(np.float64), bias=float(head.intercept_[0]))


def head_scores(features, centre, scale, weights, bias):
    """The exposure head's log-odds that each row of features (n, d) is of another kind, float64 (n,)."""
    return standardised(np.asarray(features, dtype=np.float64), centre, scale) @ weights + bias


def out_of_fold(features, labels, n_classes, negatives, rank=None):
    """(Mahalanobis distances, head log-odds) of each training photo from fits that did not see it (FOLDS folds,
    seeded; a fold's negatives are all of them)."""
    from sklearn.model_selection import KFold

    distance, log_odds = np.empty(len(features)), np.empty(len(features))
    for rest, held in KFold(min(FOLDS, len(features)), shuffle=True, random_state=0).split(features):
        fitted = mahalanobis.fit(features[rest], labels[rest], n_classes, rank)
        distance[held] = mahalanobis.distances(features[held], *fitted)
        log_odds[held] = head_scores(features[held], **fit_head(features[rest], negatives))
    return distance, log_odds


def fit(features, labels, n_classes, negatives=None, rank=None):
    """The measure's arrays (ARRAYS), float64, from training features (n, d) with their class indices, and features of
    negatives (m, d): photos of other kinds. Each view is scaled to 1 at QUANTILE of the training photos' out-of-fold
    scores: the Mahalanobis distance (its whitening and floor divided by it) and 1 + (log-odds - that quantile) /
    (that quantile - the median) for the head (its weights and bias). Without negatives: the Mahalanobis view alone,
    unscaled (as files from before the head)."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    means, whitening, floor = mahalanobis.fit(features, labels, n_classes, rank)
    if negatives is None or not len(negatives):
        return dict(means=means, whitening=whitening, floor=floor)
    negatives = np.asarray(negatives, dtype=np.float64)
    distance, log_odds = out_of_fold(features, labels, n_classes, negatives, rank)
    reach = max(float(np.quantile(distance, QUANTILE)), 1e-12)
    high, middle = np.quantile(log_odds, [QUANTILE, 0.5])
    spread = max(float(high - middle), 1e-6)
    head = fit_head(features, negatives)
    head.update(weights=head["weights"] / spread, bias=1 + (head["bias"] - high) / spread)
    return dict(means=means, whitening=whitening / reach, floor=floor / reach**2, **head)


def distances(features, arrays):
    """The familiarity distance of each row of features (n, d), float64 (n,): the larger of the Mahalanobis view and
    the head's (a measure without the head: the Mahalanobis distance alone). arrays: fit's, or a model file's."""
    found = mahalanobis.distances(features, arrays["means"], arrays["whitening"], arrays.get("floor", 0.0))
    if "weights" in arrays:
        found = np.maximum(found, head_scores(features, *(arrays[key] for key in HEAD)))
    return found


def choose_limit(val_distances, quantile=QUANTILE):
    """The distance QUANTILE of the validation photos lie within (numpy's linear quantile)."""
    return float(np.quantile(np.asarray(val_distances, dtype=np.float64), quantile))


def summary(val_distances, image_types, quantile=QUANTILE, exposed_to=None):
    """What the model file's meta keeps: the limit (chosen on the validation distances), how it was chosen, the
    share of the validation photos within it, the image types it applies to, and what the head saw (exposed_to:
    {what: how many}, none without the head)."""
    limit = choose_limit(val_distances, quantile)
    within = float(np.mean(~is_unfamiliar(np.asarray(val_distances), limit)))
    method = "mahalanobis+exposure" if exposed_to else "mahalanobis"
    found = dict(method=method, limit=limit, quantile=quantile, val_within=within, n_val=len(val_distances))
    return dict(found, image_types=image_types, **({"exposed_to": exposed_to} if exposed_to else {}))


def sampled(n, most=None, seed=0):
    """The indices of the photos the measure is fitted on: all n, or a seeded sample of most (MAX_PHOTOS), sorted."""
    most = MAX_PHOTOS if most is None else most
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def fit_on_photos(net, meta, train, val, others, **load):
    """(meta["familiarity"], the arrays) for a trained net: fitted on the training photos' features against the
    negatives' (negative_features of others, {type: paths} of photos of another kind: none, the distance alone), the
    limit chosen on the validation photos' (load: features_of_photos' device, batch_size, num_workers). train, val:
    (paths, labels, their bytes where they are shards, else None), read by the caller (folds.familiarity_photos)."""
    arrays, exposed_to = fit_on_training_photos(net, meta, train, others, **load)
    val_distances = distances(features_of_photos(net, val[0], meta, blobs=val[2], **load), arrays)
    image_types = meta.get("data", {}).get("factors", {}).get("image type", {}).get("train", {})
    types = sorted(t for t in image_types if t != "unknown")
    return summary(val_distances, types, exposed_to=exposed_to), arrays


def fit_on_training_photos(net, meta, train, others, **load):
    """(the measure's arrays, {what: how many} the exposure head learned from, None without it): fit on the features
    of train (paths, labels, their bytes or None) against negative_features' of others (load: as fit_on_photos)."""
    paths, labels, blobs = train
    train_features = features_of_photos(net, paths, meta, blobs=blobs, **load)
    negatives, exposed_to = negative_features(net, meta, others, load["device"], load.get("batch_size", 32))
    return fit(train_features, labels, len(meta["classes"]), negatives), exposed_to


def negative_features(net, meta, others, device, batch_size=32):
    """(features (m, d) of the images the exposure head learns to tell from the training photos, {what: how many}),
    or (None, None) without photos of another kind: MADE_PER_KIND images of each kind that are not lesions
    (skinlesion/non_lesions.py), and others, {type: paths} of photos of another kind (one that cannot be read is
    left out and counted)."""
    from skinlesion import messages, non_lesions, photos

    found, exposed_to, unreadable = [], {}, 0
    for image_type, paths in others.items():
        count = 0
        for start in range(0, len(paths), batch_size):
            images = [image for image, _ in map(photos.try_load_image, paths[start : start + batch_size])]
            readable = [image for image in images if image is not None]
            unreadable, count = unreadable + len(images) - len(readable), count + len(readable)
            found += [features_of_images(net, readable, meta, device, batch_size)] if readable else []
        exposed_to[f"{image_type} photos"] = count
    if unreadable:
        messages.warn(f"{unreadable} photos of another kind could not be read: left out of the familiarity check")
    if not found:
        return None, None
    made = [image for _, image in non_lesions.images(MADE_PER_KIND)]
    exposed_to["images that are not lesions (drawn)"] = len(made)
    return np.concatenate([features_of_images(net, made, meta, device, batch_size), *found]), exposed_to


def within_text(found, photos="validation photos"):
    """'98% of the 59 validation photos lie within' the familiarity limit: the share counted when the limit was
    chosen (the limit is their 99% quantile; 58 of 59 photos is 98%), the one figure the card, training and
    evaluate.py say (photos: what they were, 'out-of-fold photos' for a run with folds: card.chosen_on)."""
    return f"{found['val_within']:.0%} of the {found['n_val']} {photos} lie within"


def limit_text(found, photos="validation photos"):
    """The limit in words, as training prints it, and what the head learned from (or that there is none)."""
    views = "the Mahalanobis distance of its features to the nearest class mean"
    if found.get("exposed_to"):
        each = f"each 1 at {found['quantile']:.0%} of the training photos"
        views = f"the larger of {views} and an exposure head's score, {each}"
    text = (
        f"a photo further than {found['limit']:.2f} from the training photos ({views}; "
        f"{within_text(found, photos)}) is unfamiliar and gets no answer"
    )
    return f"{text}; {exposure_text(found)}"


def exposure_text(found):
    """What the exposure head learned from, or that without photos of another kind there is no head."""
    if not found.get("exposed_to"):
        return (
            "the dataset has no photo of another kind (prepare_dataset.py keeps some where the export has them): "
            "the distance alone, which misses many photos of another kind (docs/measurements.md)"
        )
    return "the head learned from " + ", ".join(f"{n} {what}" for what, n in found["exposed_to"].items())


def is_unfamiliar(distance, limit):
    """The rule: a photo is unfamiliar when its distance lies beyond the limit, or is not a number (NaN: a distance
    that could not be measured is never familiar). At the limit it is familiar. distance may be an array (one
    answer each); web/app.js's isUnfamiliar is its twin."""
    found = ~(np.asarray(distance) <= limit)
    return bool(found) if found.ndim == 0 else found


def unfamiliar(distance, meta):
    """Whether a photo at this distance is unfamiliar to the model (is_unfamiliar; False for a model without the
    measure)."""
    found = meta.get("familiarity")
    return bool(found) and is_unfamiliar(distance, found["limit"])


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


def graph_arrays(arrays):
    """(float32 tensors torch_distances takes, floor): the means, and a full whitening as it is, or for a whitening
    with a floor its directions and their precisions (directions(), computed here in float64); the head's arrays."""
    import torch

    def float32(array):
        return torch.as_tensor(np.asarray(array, dtype=np.float64), dtype=torch.float32)

    floor = float(arrays.get("floor", 0.0))
    found = {key: float32(arrays[key]) for key in HEAD if key in arrays}
    if not floor:
        return dict(found, means=float32(arrays["means"]), whitening=float32(arrays["whitening"])), 0.0
    basis, precisions = mahalanobis.directions(arrays["whitening"], floor)
    return dict(found, means=float32(arrays["means"]), basis=float32(basis), precisions=float32(precisions)), floor


def torch_distances(found, means, floor=0.0, whitening=None, basis=None, precisions=None, **head):
    """distances() in torch, from graph_arrays: float32 in a graph, as exported to ONNX (floor a number: a constant
    of the graph); the squared Mahalanobis distance a sum of terms >= 0 (squared_distances), so it stays within
    float32's rounding."""
    centred = found[:, None, :] - means[None]
    distance = mahalanobis.squared_distances(centred, whitening, floor, basis, precisions).clamp(min=0).amin(1).sqrt()
    if not head:
        return distance
    log_odds = standardised(found, head["centre"], head["scale"]) @ head["weights"] + head["bias"]
    return distance.maximum(log_odds)


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


def features_of_images(net, images, meta, device, batch_size=32):
    """The familiarity features (n, d), float64, of PIL images' centre crops (as features_of_photos), in eval mode."""
    import torch

    from skinlesion import photos

    found = []
    net.eval()
    for start in range(0, len(images), batch_size):
        crops = [photos.centre_crop(image, meta["image_size"], meta["crop_pct"], meta["interpolation"])
                 for image in images[start : start + batch_size]]  # fmt: skip
        x = torch.from_numpy(np.stack([np.asarray(crop).transpose(2, 0, 1) for crop in crops]))
        with torch.inference_mode():
            x = photos.normalise_batch(x.to(device), meta)
            found.append(features(net, x)[0].double().cpu().numpy())
    return np.concatenate(found)


def arrays_fault(arrays, classes):
    """What is wrong with a checkpoint's familiarity arrays (means: classes x d; whitening: d x k, 1 <= k <= d, and
    d x d without a floor; floor, where there is one: a finite number >= 0; the head, where there is one: centre,
    scale > 0 and weights of d each, one bias; all finite; no other key), or None."""
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
    unknown = sorted(str(key) for key in arrays if key not in ARRAYS)
    if unknown:
        return f"its familiarity holds {', '.join(unknown)[:80]}, which is not one of {', '.join(ARRAYS)}"
    return head_fault(arrays, d)


def head_fault(arrays, d):
    """What is wrong with a checkpoint's exposure head (all of HEAD or none), or None."""
    import torch

    present = [key for key in HEAD if key in arrays]
    if not present:
        return None
    if len(present) < len(HEAD):
        return f"its familiarity head has {', '.join(present)} without {', '.join(k for k in HEAD if k not in present)}"
    shapes = [tuple(arrays[key].shape) if torch.is_tensor(arrays[key]) else None for key in HEAD]
    if shapes != [(d,), (d,), (d,), ()] and shapes != [(d,), (d,), (d,), (1,)]:
        return f"its familiarity head's centre, scale, weights and bias {shapes} are not {d}, {d}, {d} and 1 numbers"
    if not all(arrays[key].isfinite().all() for key in HEAD) or not (arrays["scale"] > 0).all():
        return "its familiarity head holds NaN or infinite values, or a scale that is not > 0"
    return None


def state(arrays):
    """What a checkpoint keeps of its familiarity measure besides meta["familiarity"]: the arrays, float32."""
    import torch

    return {key: torch.as_tensor(np.asarray(arrays[key]), dtype=torch.float32) for key in ARRAYS if key in arrays}


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
    with the arrays; a file without a floor has a full whitening, one without a head the Mahalanobis view alone)."""
    return distances(features, meta["familiarity"])


def unfamiliar_text(distance, meta, shown):
    """The line that says why an unfamiliar photo gets no answer (or, shown, an unreliable one)."""
    limit = meta["familiarity"]["limit"]
    why = f"{unfamiliar_sentence(meta)} (familiarity distance {distance:.2f}, limit {limit:.2f})"
    if shown:
        return f"{why}; the answer below is unreliable"
    return f"{why}: no benign/malignant answer (--show-unfamiliar shows it anyway, unreliable)"
