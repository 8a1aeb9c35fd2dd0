"""skinlesion/folds.py: the folds keep a lesion's and a patient's photos together, hold every photo out once with
every class in every fold, and say in one line when they cannot; the default count follows the photo count; the
out-of-fold values come back in the photos' order; the ensemble's familiarity measure is its members' measures
combined, checked against each member's own distances. (Training with folds end to end: test_AItraining.py.)"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import fails
from skinlesion import familiarity, folds, mahalanobis, splits


def manifest_of(rows):
    """A manifest as prepare_dataset.py writes it (the columns folds reads), as strings."""
    return pd.DataFrame(rows, columns=["isic_id", "file", "lesion_id", "patient_id"]).astype(str)


def test_photos_of_one_lesion_or_patient_share_a_group_and_strangers_have_their_own():
    """A and B share a lesion, B and C a patient: one group (isic.group_ids, as the splits use it); D is alone; a
    photo the manifest does not name is its own group, matched by file name wherever the folder is."""
    manifest = manifest_of([
        ["ISIC_1", "train/benign/ISIC_1.jpg", "IL_1", ""], ["ISIC_2", "val/benign/ISIC_2.jpg", "IL_1", "IP_1"],
        ["ISIC_3", "train/malignant/ISIC_3.jpg", "", "IP_1"], ["ISIC_4", "train/benign/ISIC_4.jpg", "", ""],
    ])  # fmt: skip
    paths = ["/data/train/benign/ISIC_1.jpg", "/data/val/benign/ISIC_2.jpg", "/data/train/malignant/ISIC_3.jpg",
             "/data/train/benign/ISIC_4.jpg", "/data/train/benign/mine.jpg"]  # fmt: skip
    groups = folds.groups_of(paths, manifest)
    assert groups[0] == groups[1] == groups[2] and len(set(groups)) == 3
    assert list(folds.groups_of(paths[:2], None)) == ["photo ISIC_1.jpg", "photo ISIC_2.jpg"]  # no manifest


def test_each_photo_is_held_out_once_with_its_group_and_every_class_in_every_fold():
    labels = np.repeat([0, 1], 60)
    groups = np.array([f"g{i // 3}" for i in range(120)])  # three photos per lesion
    fold = folds.assign(labels, groups, 5, seed=1)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    for group in set(groups):
        assert len(set(fold[groups == group])) == 1  # a lesion's photos in one fold
    for f in range(5):
        assert set(labels[fold == f]) == {0, 1} and 16 <= (fold == f).sum() <= 32
    assert np.array_equal(fold, folds.assign(labels, groups, 5, seed=1))  # the same seed, the same folds
    assert not np.array_equal(fold, folds.assign(labels, groups, 5, seed=2))
    stages = folds.plan(5, "refit", labels, groups, 1)
    held = np.concatenate([s.held for s in stages[:5]])
    assert sorted(held) == list(range(120))  # every photo held out exactly once
    assert all(not set(s.train) & set(s.held) for s in stages[:5]) and stages[5].name == "refit"
    assert [s.name for s in folds.plan(3, "ensemble", labels, groups, 1)] == ["fold 1/3", "fold 2/3", "fold 3/3"]


def test_too_few_groups_of_a_class_for_the_folds_is_one_line(capsys):
    labels = np.array([0] * 10 + [1] * 4)
    groups = np.array([f"b{i}" for i in range(10)] + ["m1", "m1", "m2", "m3"])  # 3 malignant lesions
    said = "--folds 4: a class has only 3 lesion/patient groups in train plus validation, too few to hold some"
    fails(capsys, said, folds.assign, labels, groups, 4, 0)
    assert sorted(set(folds.assign(labels, groups, 3, 0))) == [0, 1, 2]  # the nearest that works


def test_the_default_count_of_folds_follows_the_photos():
    """A few hundred photos get folds; more than MOST_PHOTOS keep one split. run_plan decides it and, with one
    split and no validation split, dies saying what helps."""
    assert folds.default_folds(340) == 5 and folds.default_folds(folds.MOST_PHOTOS) == 5
    assert folds.default_folds(folds.MOST_PHOTOS + 1) == 1
    args = SimpleNamespace(folds=None, deploy="refit", seed=0, data_dir="nowhere")
    train = ([f"t{i}.jpg" for i in range(30)], np.repeat([0, 1], 15))
    val = ([f"v{i}.jpg" for i in range(10)], np.repeat([0, 1], 5))
    stages, pool = folds.run_plan(args, None, train, val)
    assert args.folds == 5 and len(stages) == 6 and pool[0] == train[0] + val[0]
    assert list(pool[1]) == list(train[1]) + list(val[1])
    args = SimpleNamespace(folds=None, deploy="ensemble", seed=0, data_dir="nowhere")
    stages, pool = folds.run_plan(args, None, train, ([], np.array([], dtype=int)))  # no validation split: train
    assert len(stages) == 5 and len(pool[0]) == 30
    args = SimpleNamespace(folds=1, deploy="refit", seed=0, data_dir="nowhere")
    assert folds.run_plan(args, None, train, val) == ([folds.Stage("", None, None)], None)


def test_out_of_fold_values_come_back_in_the_photos_order():
    stages = [folds.Stage("fold 1/2", np.array([1, 3]), np.array([0, 2])), folds.Stage("fold 2/2", None, [1, 3])]
    done = [dict(logits=[[0.0, 1.0], [2.0, 3.0]]), dict(logits=[[4.0, 5.0], [6.0, 7.0]])]
    found = folds.out_of_fold(done, stages, "logits", 4)
    assert found.tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]


def test_photos_of_shards_are_cut_into_folds_only_when_cached(monkeypatch, capsys):
    monkeypatch.setattr(splits, "is_shards", lambda data_dir: True)
    args = SimpleNamespace(folds=5, cache_gb=2.0, data_dir="s3://bucket/shards")
    said = "--folds 5: photos read from shards are cut into folds only when cached on the device (3.20 GB, more "
    fails(capsys, said + "than --cache-gb 2); pass --cache-gb 4, or --folds 1", folds.pooled_blobs, args, False, 3.2)


def test_the_ensembles_familiarity_is_its_members_measures_combined():
    """Each member's measure fitted on its own features against negatives (as a fold network's on the photos it
    trained on, with an exposure head); on the members' features side by side (stage by stage, as
    ensemble.averaged lays them out) the ensemble's Mahalanobis view is sqrt(mean over members of (F / floor_k)
    d_k^2) with the class chosen jointly, its head's score the mean of the members' scores, and its distance the
    larger, each computed here from the members' own measures; a member's stand-in for the limit is its weighed
    Mahalanobis view or its head's score, the larger."""
    rng = np.random.default_rng(0)
    widths, n_classes, k = [3, 5, 8], 2, 3  # two stages and the pooled features: 16 per member
    labels = rng.integers(0, n_classes, 200)
    members, own = [], []
    for m in range(k):
        scale = rng.uniform(0.5, 2.0, sum(widths))
        features = rng.normal(size=(200, sum(widths))) * scale + labels[:, None] * (m + 1)
        negatives = rng.normal(size=(60, sum(widths))) * scale + 3.0
        members.append(familiarity.fit(features, labels, n_classes, negatives, rank=4))
        own.append(features)
    arrays, weights = folds.ensemble_measure(members, widths)
    joined = np.zeros((200, k * sum(widths)))
    for m in range(k):
        joined[:, folds.member_positions(widths, m, k)] = own[m]
    harmonic = k / sum(1 / m["floor"] for m in members)
    per_class = np.zeros((200, n_classes))
    for c in range(n_classes):
        for m in range(k):
            one = mahalanobis.distances(own[m], members[m]["means"][c : c + 1], members[m]["whitening"],
                                        members[m]["floor"])  # fmt: skip
            per_class[:, c] += harmonic / members[m]["floor"] * one**2 / k
    view, head = folds.views(joined, arrays)
    assert view == pytest.approx(np.sqrt(per_class.min(1)), rel=1e-6)
    heads = [familiarity.head_scores(own[m], *(members[m][key] for key in familiarity.HEAD)) for m in range(k)]
    assert head == pytest.approx(np.mean(heads, 0), rel=1e-9, abs=1e-9)
    assert familiarity.distances(joined, arrays) == pytest.approx(np.maximum(view, head))
    assert weights == pytest.approx([np.sqrt(harmonic / m["floor"]) for m in members])
    lone = [mahalanobis.distances(own[m], members[m]["means"], members[m]["whitening"], members[m]["floor"])
            * weights[m] for m in range(k)]  # fmt: skip
    assert np.median(view) == pytest.approx(np.median(np.sqrt(np.mean(np.square(lone), 0))), rel=0.05)
    entry = dict(member_distances=torch.as_tensor(lone[0] / weights[0]), member_head=torch.as_tensor(heads[0]))
    assert folds.member_stand_in(entry, weights[0]) == pytest.approx(np.maximum(lone[0], heads[0]))
    del entry["member_head"]  # no photos of another kind: the Mahalanobis view alone
    assert folds.member_stand_in(entry, weights[0]) == pytest.approx(lone[0])
    alone, _ = folds.ensemble_measure([{key: m[key] for key in familiarity.MAHALANOBIS} for m in members], widths)
    assert set(alone) == set(familiarity.MAHALANOBIS) and folds.views(joined, alone)[1] is None
    assert familiarity.distances(joined, alone) == pytest.approx(view)


def test_the_deployed_measure_is_fitted_on_photos_read_before_it(monkeypatch):
    """folds.familiarity_photos reads what the deployed network's familiarity is fitted on, so that the fit itself
    (familiarity.fit_on_photos, deployed_measure) reads no dataset: of shards, one split's sampled photos' bytes
    alone, each from its own split, their labels following them; with folds, train plus validation's bytes whole;
    and the photos of another kind, at most familiarity.MAX_OTHER_TYPES."""
    from skinlesion import other_types

    asked = []
    monkeypatch.setattr(familiarity, "MAX_PHOTOS", 3)
    monkeypatch.setattr(splits, "is_shards", lambda data_dir: True)
    monkeypatch.setattr(splits, "has_split", lambda data_dir, split: True)
    monkeypatch.setattr(splits, "read_blobs", lambda d, split, wanted=None: asked.append((split, wanted)) or {split: 1})
    monkeypatch.setattr(other_types, "photos_of", lambda data_dir, most: {"clinical": [f"{data_dir} {most}"]})
    run = SimpleNamespace(args=SimpleNamespace(data_dir="shards", folds=5, cache_gb=1.0), pool=None)
    train = ([f"t{i}" for i in range(10)], np.arange(10) * 10)
    photos, others = folds.familiarity_photos(run, train, (["v0", "v1"], np.array([1, 0])))
    kept = familiarity.sampled(10, 3)
    assert photos[0][0] == [f"t{i}" for i in kept] and photos[0][1].tolist() == (kept * 10).tolist()
    assert photos[0][2] == {"train": 1} and len(kept) == 3
    assert photos[1][0] == ["v0", "v1"] and photos[1][1].tolist() == [1, 0] and photos[1][2] == {"val": 1}
    assert asked == [("train", {f"t{i}" for i in kept}), ("val", {"v0", "v1"})]
    assert others == {"clinical": [f"shards {familiarity.MAX_OTHER_TYPES}"]}
    asked.clear()
    run.pool = (["a", "b"], np.array([0, 1]))
    photos, _ = folds.familiarity_photos(run, train, (["v0"], np.array([1])))
    assert len(photos) == 1 and photos[0][:2] == run.pool and photos[0][2] == {"train": 1, "val": 1}
    assert asked == [("train", None), ("val", None)]
