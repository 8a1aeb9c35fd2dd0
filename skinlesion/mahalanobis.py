"""The Mahalanobis distance of features to the nearest of some class means, with one covariance shared by the
classes, shrunk by Ledoit-Wolf (a few hundred photos cannot estimate a 1792 x 1792 covariance alone) and kept small:
with C = V diag(l) V^T, its RANK largest eigenpairs and, for the other d - RANK directions, the mean l_f of their
eigenvalues (the precision floor = 1 / l_f), so that with x = f - mean
    distance^2 = floor |x|^2 - |x W|^2,   W = V_RANK diag(sqrt(floor - 1 / l_i))  (d x RANK, floor >= 1 / l_i),
one d x RANK matrix and a number instead of d x d (exact where the other eigenvalues are equal: fewer photos than
RANK). It is computed as a sum of terms >= 0 (squared_distances), which float32 keeps within its rounding, CHUNK
photos and one class at a time. RANK: the smallest measured that changed no familiar/unfamiliar decision further
than 5% of the limit from it; docs/measurements.md. (A file from before the floor keeps a full d x d W: floor 0.)"""

import numpy as np

RANK = 640  # eigenpairs of the covariance kept, >= 1 (the others share their mean; >= d: all of them, exact)
CHUNK = 2048  # photos per step of distances(): its memory stays CHUNK x d numbers, whatever the photos and classes


def fit(features, labels, n_classes, rank=None):
    """(class means (n_classes, d), whitening (d, k), floor), float64, from training features (n, d) and their class
    indices: the shared covariance C of the features around their class means, shrunk by Ledoit-Wolf, kept as its
    rank (RANK) largest eigenpairs and the mean of the others (see distances): k = rank, or n where fewer photos
    than that leave the others equal. Where rank >= d: the full whitening (d, d), W^T C W = I, and floor 0. A class
    without photos takes the mean of all."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    means = np.stack([features[labels == c].mean(0) if (labels == c).any() else features.mean(0)
                      for c in range(n_classes)])  # fmt: skip
    rank = RANK if rank is None else rank
    values, vectors = shrunk_eigenpairs(features - means[labels], full=rank >= features.shape[1])
    values = np.maximum(values, values.max() * 1e-12)
    if rank >= len(values):
        return means, vectors / np.sqrt(values), 0.0
    floor = 1 / values[rank:].mean()  # the precision of every direction but the top rank ones
    kept = min(rank, vectors.shape[1])  # past the photos' directions, the eigenvalues are the floor's: no column
    return means, vectors[:, :kept] * np.sqrt(np.maximum(floor - 1 / values[:kept], 0)), float(floor)


def shrunk_eigenpairs(centred, full=False):
    """(the d eigenvalues of the Ledoit-Wolf covariance (1 - s) X^T X / n + s mu I of centred X (n, d), descending;
    the eigenvectors of the first of them, (d, m)): all d from the covariance (full, or n >= d), else the n from
    X's singular value decomposition (n^2 d operations instead of d^3), the other d - n eigenvalues being s mu."""
    from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

    n, d = centred.shape
    if full or n >= d:
        values, vectors = np.linalg.eigh(LedoitWolf(assume_centered=True).fit(centred).covariance_)
        return values[::-1], vectors[:, ::-1]
    shrinkage, mu = ledoit_wolf_shrinkage(centred, assume_centered=True), (centred**2).sum() / (n * d)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    values = np.full(d, shrinkage * mu)
    values[:n] += (1 - shrinkage) * singular**2 / n
    return values, rows.T


def directions(whitening, floor):
    """(basis (d, k), precisions (k,)) of a whitening with a floor, float64: its columns are v_i sqrt(floor - 1/l_i),
    so v_i = W_i / |W_i| and 1/l_i = floor - |W_i|^2 (a column of zeros, l_i at the floor, is left to the floor)."""
    whitening = np.asarray(whitening, dtype=np.float64)
    norms = np.linalg.norm(whitening, axis=0)
    kept = norms > 0
    return whitening[:, kept] / norms[kept], np.maximum(float(floor) - norms[kept] ** 2, 0)


def squared_distances(centred, whitening, floor, basis, precisions):
    """The squared Mahalanobis distance of each row of centred (n, d), as a sum of terms >= 0 (no cancellation in
    float32): |x W|^2 for a full whitening (floor 0); with a floor, floor |x - (x V) V^T|^2 + sum_i (x v_i)^2 / l_i,
    which equals floor |x|^2 - |x W|^2."""
    if not floor:
        return ((centred @ whitening) ** 2).sum(-1)
    along = centred @ basis
    return floor * ((centred - along @ basis.T) ** 2).sum(-1) + (along**2 * precisions).sum(-1)


def distances(features, means, whitening, floor=0.0):
    """The Mahalanobis distance of each row of features (n, d) to the nearest class mean, float64 (n,): with x = f -
    mean, sqrt(floor |x|^2 - |x W|^2) for a whitening (d, k) with a floor, sqrt(|x W|^2) for a full one (floor 0);
    CHUNK photos and one class at a time, so its memory stays bounded (CHUNK x d)."""
    features, means = np.asarray(features, dtype=np.float64), np.asarray(means, dtype=np.float64)
    whitening, floor = np.asarray(whitening, dtype=np.float64), float(floor)
    basis, precisions = directions(whitening, floor) if floor else (None, None)
    found = np.empty(len(features))
    for start in range(0, len(features), CHUNK):
        chunk = features[start : start + CHUNK]
        squared = [squared_distances(chunk - mean, whitening, floor, basis, precisions) for mean in means]
        found[start : start + CHUNK] = np.sqrt(np.maximum(np.min(squared, axis=0), 0))
    return found
