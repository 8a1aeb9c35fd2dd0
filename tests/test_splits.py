"""skinlesion/splits.py: photos of one lesion or one patient land in one split (union-find groups), every split
has every class or the run stops with one line naming the class."""

import numpy as np
import pandas as pd

from conftest import fails
from skinlesion import splits


def test_union_find_groups_lesions_and_patients():
    df = pd.DataFrame(
        {
            "isic_id": ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5", "ISIC_6"],
            "lesion_id": ["IL_1", "IL_1", "IL_2", "", "", "IL_3"],
            "patient_id": ["", "IP_1", "IP_1", "IP_1", "", ""],
        }
    )
    groups = list(splits.group_ids(df))
    assert len(set(groups[:4])) == 1  # linked through IL_1 and IP_1
    assert len(set(groups)) == 3


def labels_and_groups(counts, views=2):
    """labels (numpy strings) and groups: counts[c] lesions of class c, views photos each."""
    labels = np.array([c for c, n in counts.items() for _ in range(n * views)])
    groups = np.array([f"{c}-{i // views}" for c, n in counts.items() for i in range(n * views)])
    return labels, groups


def test_split_groups_keeps_groups_together_and_every_class_in_every_split():
    labels, groups = labels_and_groups({"benign": 60, "malignant": 30, "melanoma": 12})
    split = splits.split_groups(labels, groups, 0.15, 0.15, seed=0)
    assert set(split) == {"train", "val", "test"}
    for s in ["train", "val", "test"]:
        assert set(labels[split == s]) == {"benign", "malignant", "melanoma"}, s
    assert all(len(set(split[groups == g])) == 1 for g in set(groups))  # a lesion's photos stay together
    assert 0.2 < np.mean(split != "train") < 0.4
    assert np.array_equal(split, splits.split_groups(labels, groups, 0.15, 0.15, seed=0))  # seeded
    assert list(splits.split_groups(labels, groups, 0, 0, seed=0)) == ["train"] * len(labels)


def test_a_class_too_rare_for_every_split_is_one_line_naming_it(capsys):
    labels, groups = labels_and_groups({"benign": 40, "malignant": 40, "melanoma": 2})
    expected = (
        "split would have no melanoma images: the 4 melanoma images are only 2 groups; add melanoma images, or "
        "lower --val-fraction/--test-fraction"
    )
    fails(capsys, expected, splits.split_groups, labels, groups, 0.15, 0.15, seed=0)


def test_too_few_groups_for_val_and_test_is_one_line(capsys):
    labels, groups = labels_and_groups({"benign": 1, "malignant": 1}, views=3)
    fails(capsys, "only 2 lesion/patient groups, too few", splits.split_groups, labels, groups, 0.15, 0.15, seed=0)
