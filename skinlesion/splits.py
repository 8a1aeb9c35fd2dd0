"""Train, validation and test splits that keep lesions and patients apart: photos of one lesion, or of one patient,
always land in the same split, so validation and test scores are not inflated by near-copies seen in training."""

import warnings

import numpy as np
import pandas as pd

from skinlesion.cli import die


def group_ids(df):
    """A group per row: connected components (union-find) of rows sharing a lesion_id or a patient_id (or none)."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for isic_id, lesion, patient in zip(df.isic_id, df.lesion_id, df.patient_id):
        keys = []
        if lesion:
            keys.append(f"lesion {lesion}")
        if patient:
            keys.append(f"patient {patient}")
        for key in keys:
            parent[find(key)] = find(isic_id)
    return pd.Series([find(i) for i in df.isic_id], index=df.index)


def split_groups(labels, groups, val_fraction, test_fraction, seed):
    """'train', 'val' or 'test' per row: StratifiedGroupKFold cuts the groups into (up to) 20 folds of about the
    same class balance; the first folds are test, the next val, the rest train. Each split needs every class."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = min(20, len(set(groups)), max(pd.Series(labels).value_counts()))  # as StratifiedGroupKFold needs
    n_test, n_val = (max(1, round(f * n_folds)) if f else 0 for f in (test_fraction, val_fraction))
    if n_test + n_val == 0:
        return np.full(len(labels), "train")
    if n_test + n_val >= n_folds:
        die(
            f"only {len(set(groups))} lesion/patient groups, too few for val and test splits; add images, or set "
            "--val-fraction and --test-fraction to 0"
        )
    fold = np.zeros(len(labels), int)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected, harmless
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, idx) in enumerate(cv.split(labels, labels, groups)):
            fold[idx] = k
    split = np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))
    for s in sorted(set(split)):
        for c in sorted(set(labels)):
            if not (labels[split == s] == c).any():
                die(
                    f"the {s} split would have no {c} images: the {(labels == c).sum()} {c} images are only "
                    f"{len(set(groups[labels == c]))} groups; add {c} images, or lower --val-fraction/"
                    "--test-fraction"
                )
    return split
