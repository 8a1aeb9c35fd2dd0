"""Cross-validated folds of train plus validation (AItraining.py --folds), for data sets of a few hundred photos:
every photo is held out once, by a network that trains on the other folds and picks its best epoch on it; the
photos of one lesion or patient stay in one fold (the grouping prepare_dataset.py's splits use, isic.group_ids),
and each fold has about the same class balance (scikit-learn's StratifiedGroupKFold). The out-of-fold predictions
of every photo then choose the threshold, fit the calibration and set the familiarity limit: about 340 photos on
the demo where a validation split had 56."""

import math
import os
import warnings
from typing import NamedTuple

import numpy as np

from skinlesion.messages import UserError

MOST_PHOTOS = 2000  # up to this many photos in train plus validation get DEFAULT folds unless told; more keep a split
DEFAULT = 5  # folds where photos are few


class Stage(NamedTuple):
    """A part of a run: one split (name ''), a fold, or the refit. train, held: the indices of the photos it trains
    on and validates on (None: all of its split; the refit holds none out)."""

    name: str
    train: object
    held: object


def default_folds(n_photos):
    """DEFAULT folds up to MOST_PHOTOS photos in train plus validation, else 1 (one split, as on the archive)."""
    return DEFAULT if n_photos <= MOST_PHOTOS else 1


def groups_of(paths, manifest):
    """A group per photo: its lesion and patient group in the dataset's manifest (isic.group_ids: connected by a
    shared lesion_id or patient_id), found by its file name; a photo the manifest does not name (a folder made by
    hand) is a group of its own."""
    from skinlesion import isic

    names = [os.path.basename(str(path)) for path in paths]
    if manifest is None or manifest.empty or not {"isic_id", "file"} <= set(manifest.columns):
        return np.array(["photo " + name for name in names])
    rows = manifest.assign(name=manifest.file.map(lambda file: file.rsplit("/", 1)[-1]))
    for column in ("lesion_id", "patient_id"):
        if column not in rows:
            rows[column] = ""
    group = dict(zip(rows.name, isic.group_ids(rows)))
    return np.array([str(group.get(name, "photo " + name)) for name in names])


def assign(labels, groups, k, seed):
    """The fold (0 to k-1) of each photo: StratifiedGroupKFold's, shuffled by seed. Dies in one line where a fold
    would hold no photo of a class (too few groups of it), naming the flag that helps."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    fold = np.full(len(labels), -1)
    fewest = min(len(set(groups[labels == c])) for c in np.unique(labels))
    if fewest >= k:
        with warnings.catch_warnings():  # "the least populated class has only n members": checked below
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            for f, (_, held) in enumerate(cv.split(labels, labels, groups)):
                fold[held] = f
    lacking = fewest < k or any(len(np.unique(labels[fold == f])) < len(np.unique(labels)) for f in range(k))
    if lacking:
        raise UserError(
            f"--folds {k}: a class has only {fewest} lesion/patient groups in train plus validation, too few to hold "
            f"some of it out in each of {k} folds; pass a lower --folds (or --folds 1: one split), or add photos"
        )
    return fold


def plan(k, deploy, labels, groups, seed):
    """The stages of a run with k folds of train plus validation (labels, groups: one per photo): each fold held out
    once; then, deploying refit, one network on all of them."""
    fold = assign(labels, groups, k, seed)
    stages = [Stage(f"fold {f + 1}/{k}", np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]
    if deploy == "refit":
        stages.append(Stage("refit", np.arange(len(labels)), np.array([], dtype=int)))
    return stages


def refit_epochs(done):
    """How long the refit trains: the median of the folds' best epochs (at least 1)."""
    return max(1, int(np.median([entry["epoch"] for entry in done])))


def out_of_fold(done, stages, key, n):
    """Every photo's value of key (logits, distances) from the fold that held it out, in the photos' order."""
    first = np.asarray(done[0][key])
    found = np.zeros((n, *first.shape[1:]), dtype=np.float64)
    for entry, stage in zip(done, stages):
        found[stage.held] = np.asarray(entry[key], dtype=np.float64)
    return found


def negatives_of(net, seen_as, others, load):
    """(the features through net of the images an exposure head learns to tell from the training photos, {what: how
    many}): others, {type: paths} of the dataset's photos of another kind (skinlesion/other_types.py), and drawn
    non-lesions, as familiarity.fit_on_photos takes them; (None, None) where there is no photo of another kind."""
    from skinlesion import familiarity

    return familiarity.negative_features(net, seen_as, others, load["device"], load.get("batch_size", 32))


def views(features, arrays):
    """(the Mahalanobis view's distances, the exposure head's scores or None without a head) of features (n, d) to
    a familiarity measure (familiarity.distances is the larger of the two)."""
    from skinlesion import familiarity, mahalanobis

    distance = mahalanobis.distances(features, arrays["means"], arrays["whitening"], arrays.get("floor", 0.0))
    if "weights" not in arrays:
        return distance, None
    return distance, familiarity.head_scores(features, *(arrays[key] for key in familiarity.HEAD))


def member_positions(widths, k, members):
    """Where member k's familiarity features (its stages' widths, then its pooled features) sit among an
    ensemble's (each stage's of all members side by side: ensemble.averaged)."""
    found, start = [], 0
    for width in widths:
        found.extend(range(start + k * width, start + (k + 1) * width))
        start += members * width
    return np.array(found)


def ensemble_measure(members, widths):
    """(arrays, weights): an ensemble's familiarity measure (familiarity.ARRAYS) from its members' (dicts as
    familiarity.fit gives them), each fitted on the photos that member trained on, for the members' features side
    by side (member_positions). Its Mahalanobis view: with F the harmonic mean of the members' floors, the squared
    distance is the mean over members of (F / floor_k) d_k^2, each d_k on the member's own features, the class
    chosen jointly (in mahalanobis' form: floor F / K, member k's whitening times sqrt(F / (K floor_k)), block by
    block). Its exposure head, where the members have one: the mean of their scores (their centres and scales side
    by side, their weights side by side divided by K, the mean of their biases). weights: sqrt(F / floor_k), what
    member k's own Mahalanobis distances are multiplied by to stand for the ensemble's."""
    n, d = len(members), sum(widths)
    floor = n / sum(1 / float(m["floor"]) for m in members)
    means, blocks = np.zeros((len(members[0]["means"]), n * d)), []
    head = {key: np.zeros(n * d) for key in ("centre", "scale", "weights")} if "weights" in members[0] else {}
    for k, member in enumerate(members):
        at = member_positions(widths, k, n)
        means[:, at] = member["means"]
        block = np.zeros((n * d, member["whitening"].shape[1]))
        block[at] = member["whitening"] * np.sqrt(floor / (n * float(member["floor"])))
        blocks.append(block)
        if head:
            head["centre"][at], head["scale"][at] = member["centre"], member["scale"]
            head["weights"][at] = np.asarray(member["weights"]) / n
    arrays = dict(means=means, whitening=np.concatenate(blocks, 1), floor=floor / n, **head)
    if head:
        arrays["bias"] = float(np.mean([float(m["bias"]) for m in members]))
    return arrays, [np.sqrt(floor / float(m["floor"])) for m in members]


def run_plan(args, manifest, train, val):
    """(the stages of a run, the photos they cut into folds or None) for AItraining.py's args (folds, deploy, seed:
    folds None is decided here by the photo count): one split (train on train, validate on val), or the folds of
    train plus validation (paths, labels), grouped by lesion and patient as the manifest has them."""
    from skinlesion import training

    if args.folds is None:
        args.folds = default_folds(len(train[0]) + len(val[0]))
    if args.folds == 1 and not len(val[0]):
        training.validation_photos(args.data_dir, [], 1)  # no validation split: dies, saying why
    if args.folds == 1:
        return [Stage("", None, None)], None
    paths, labels = list(train[0]) + list(val[0]), np.concatenate([train[1], val[1]]).astype(int)
    return plan(args.folds, args.deploy, labels, groups_of(paths, manifest), args.seed), (paths, labels)


def fold_familiarity(net, seen_as, photos, stage, k, ensemble, data_dir, **load):
    """What a fold keeps of the familiarity measure of its network at its best epoch, fitted (familiarity.fit) on the
    features of the photos it trained on, against the negatives through this network (negatives_of: none without
    photos of another kind): the distances of the photos it held out (a refit's limit is chosen on them) and what
    the exposure head learned from; for an ensemble also the member's own measure (of rank mahalanobis.RANK / k: the
    ensemble keeps k side by side) and its two views of those photos apart (ensemble_measure weighs one). photos:
    (paths, labels, blobs); load: features_of_photos' device, batch_size, num_workers."""
    import torch

    from skinlesion import familiarity, mahalanobis, other_types

    paths, labels, blobs = photos
    train = stage.train[familiarity.sampled(len(stage.train))]
    features = familiarity.features_of_photos(net, [paths[i] for i in train], seen_as, blobs=blobs, **load)
    held = familiarity.features_of_photos(net, [paths[i] for i in stage.held], seen_as, blobs=blobs, **load)
    others = other_types.photos_of(data_dir, familiarity.MAX_OTHER_TYPES)
    negatives, exposed_to = negatives_of(net, seen_as, others, load)
    n_classes = len(seen_as["classes"])
    arrays = familiarity.fit(features, labels[train], n_classes, negatives)
    kept = dict(distances=torch.as_tensor(familiarity.distances(held, arrays)))
    if exposed_to:
        kept["exposed_to"] = exposed_to
    if ensemble:
        member = familiarity.fit(features, labels[train], n_classes, negatives, max(1, mahalanobis.RANK // k))
        distance, head = views(held, member)
        kept.update(member=familiarity.state(member), member_distances=torch.as_tensor(distance))
        if head is not None:
            kept["member_head"] = torch.as_tensor(head)
    return kept


def member_stand_in(entry, weight):
    """The out-of-fold distances a fold keeps for an ensemble's limit: its member's Mahalanobis view times its
    weight (ensemble_measure), or its head's score where that is larger."""
    found = entry["member_distances"].double().numpy() * weight
    if "member_head" in entry:
        found = np.maximum(found, entry["member_head"].double().numpy())
    return found


def deployed_measure(net, seen_as, photos, done, stages, others, ensemble_of=None, **load):
    """(familiarity.summary, its arrays) of the deployed network. The refit's measure is fitted on the features of
    all the photos (train plus validation, through the refit network) against the negatives; an ensemble's is its
    members' combined (ensemble_of: the widths of a member's features; ensemble_measure). The limit is QUANTILE of
    the out-of-fold distances: each photo's to the measure of the fold network that did not train on it (for an
    ensemble, that member's stand-in for the ensemble's distance, member_stand_in). So it says where 99% of photos
    that the network never trained on lie, the fold networks standing in for the deployed one, which trained on
    them all: a new photo is one it never trained on."""
    from skinlesion import familiarity

    paths, labels, blobs = photos
    factors = seen_as.get("data", {}).get("factors", {}).get("image type", {})
    image_types = sorted({t for split in ("train", "val") for t in factors.get(split, {}) if t != "unknown"})
    if ensemble_of is not None:
        members = [{key: value.double().numpy() for key, value in entry["member"].items()} for entry in done]
        arrays, weights = ensemble_measure(members, ensemble_of)
        scaled = [dict(distances=member_stand_in(entry, w)) for entry, w in zip(done, weights)]
        distances, exposed_to = out_of_fold(scaled, stages, "distances", len(labels)), done[0].get("exposed_to")
    else:
        distances = out_of_fold(done, stages, "distances", len(labels))
        chosen = familiarity.sampled(len(paths))
        train = ([paths[i] for i in chosen], labels[chosen], blobs)
        arrays, exposed_to = familiarity.fit_on_training_photos(net, seen_as, train, others, **load)
    return familiarity.summary(distances, image_types, exposed_to=exposed_to), arrays


def fold_done(run, progress, stage):
    """A fold's end in a run (AItraining.py's): its best epoch (on every process: the refit's length comes from
    them) and, on rank 0, its out-of-fold logits and familiarity distances (fold_familiarity), and for an ensemble
    its weights (the resume checkpoint keeps them)."""
    import torch

    entry, args = dict(epoch=progress["best_epoch"]), run.args
    if run.rank == 0:
        run.net.load_state_dict(progress["best_state_dict"])
        load = dict(device=run.device, batch_size=args.batch_size, num_workers=args.num_workers)
        pool = (*run.pool, pooled_blobs(args, True, 0))
        entry.update(fold_familiarity(run.net, run.seen_as, pool, stage, args.folds, args.deploy == "ensemble",
                                      args.data_dir, **load))  # fmt: skip
        entry["logits"] = torch.as_tensor(np.asarray(progress["best_logits"], dtype=np.float64))
        if args.deploy == "ensemble":
            entry["weights"] = progress["best_state_dict"]
    progress["done"].append(entry)


def familiarity_photos(run, train_photos, val_photos):
    """What the deployed network's familiarity measure is fitted on, read before it is fitted: ([photos as (paths,
    labels, their bytes where they are shards, else None)], {type: paths} of the dataset's photos of another kind
    (other_types: what the exposure head learns from)). One split: a seeded sample (familiarity.sampled) of the
    training photos, then of the validation ones, only the sampled photos' bytes kept; folds: train plus validation."""
    from skinlesion import familiarity, other_types, splits

    data_dir = run.args.data_dir
    others = other_types.photos_of(data_dir, familiarity.MAX_OTHER_TYPES)
    if run.pool is not None:
        return [(*run.pool, pooled_blobs(run.args, True, 0))], others
    found = []
    for split, (paths, labels) in (("train", train_photos), ("val", val_photos)):
        chosen = familiarity.sampled(len(paths))
        paths = [paths[i] for i in chosen]
        blobs = splits.read_blobs(data_dir, split, set(paths)) if splits.is_shards(data_dir) else None
        found.append((paths, np.asarray(labels)[chosen], blobs))
    return found, others


def deployed_familiarity(run, progress, net, photos, others):
    """(familiarity.summary, its arrays) of the network a run (AItraining.py's) deploys, from familiarity_photos'
    photos and others: with one split, fitted on the training photos with the limit from the validation ones
    (familiarity.fit_on_photos); with folds, from them (deployed_measure)."""
    from skinlesion import familiarity

    args = run.args
    load = dict(device=run.device, batch_size=args.batch_size, num_workers=args.num_workers)
    if run.pool is None:
        return familiarity.fit_on_photos(net, run.seen_as, *photos, others, **load)
    widths = None
    if args.deploy == "ensemble":
        widths = [info["num_chs"] for info in net.members[0].feature_info] + [net.members[0].num_features]
    return deployed_measure(net, run.seen_as, photos[0], progress["done"], run.stages, others, widths, **load)


def open_run(run, train_photos, val_photos):
    """(the photos a run (AItraining.py's) trains on, those it validates on): one split's, or train plus
    validation for its folds (run.pool), cached or streamed (training.open_splits), said in one line."""
    from skinlesion import training

    args, pool = run.args, run.pool
    if pool is None:
        train, val, where = training.open_splits(args, train_photos, val_photos, run.cfg, run.device, run.rank,
                                                 run.world)  # fmt: skip
        said = f"train: {len(train_photos[0])} images {counted(train_photos[1], run.meta)}, val: {len(val_photos[0])}"
        said += " images,"
    else:
        gigabytes = training.cache_gigabytes(len(pool[0]), len(pool[0]), run.cfg)
        blobs = pooled_blobs(args, gigabytes <= args.cache_gb, gigabytes)
        train, val, where = training.open_splits(args, pool, pool, run.cfg, run.device, run.rank, run.world, True,
                                                 blobs)  # fmt: skip
        said = f"train plus validation: {len(pool[0])} images {counted(pool[1], run.meta)} in {args.folds} folds "
        said += f"(grouped by lesion and patient; deployed: {args.deploy}),"
    run.log(f"{said} device: {run.device}, processes: {run.world}, image size {args.image_size}, photos {where}")
    return train, val


def counted(labels, meta):
    """{class: photos} of class indices."""
    return dict(zip(meta["classes"], np.bincount(labels, minlength=len(meta["classes"])).tolist()))


def pooled_blobs(args, cached, gigabytes):
    """The bytes of the photos of train plus validation where they are shards (None for folders): cut into folds,
    they must be cached, as a stream reads whole shards."""
    from skinlesion import splits

    if not splits.is_shards(args.data_dir):
        return None
    if not cached:
        raise UserError(
            f"--folds {args.folds}: photos read from shards are cut into folds only when cached on the device "
            f"({gigabytes:.2f} GB, more than --cache-gb {args.cache_gb:g}); pass --cache-gb {math.ceil(gigabytes)}, "
            "or --folds 1"
        )
    held = [split for split in ("train", "val") if splits.has_split(args.data_dir, split)]
    return {name: blob for split in held for name, blob in splits.read_blobs(args.data_dir, split).items()}
