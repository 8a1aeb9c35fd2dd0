"""skinlesion/resume.py: what a resume checkpoint holds is checked before it is used; where a resumed run writes
its checkpoints (beside a copy it read); a run's progress kept epoch by epoch. (--resume end to end:
test_AItraining.py.)"""

import json
import os

import numpy as np
import torch

from conftest import recorded
from skinlesion import ledger, resume


def test_a_resume_state_of_another_shape_is_refused_before_it_is_used():
    """--resume reads these: each of another shape is one fault line, never a traceback later."""
    epoch = dict(epoch=1, roc_auc=0.7, val_loss=0.6, train_loss=0.5, train_accuracy=0.8, lr=1e-4, seconds=3.0)
    weights = {"w": torch.ones(2, 3), "n": torch.tensor(3)}
    fold = dict(epoch=2, logits=torch.zeros(3, 2, dtype=torch.float64), distances=torch.ones(3, dtype=torch.float64))
    good = dict(optimizer={"state": {}}, schedule={"last_epoch": 3}, best=[0.7, -0.6], bad_epochs=0,
                stopped_early=False, history=json.dumps([epoch]), finished=False, state_dict=weights, stage=1,
                best_state_dict=dict(weights), best_logits=torch.zeros(5, 2, dtype=torch.float64), done=[fold],
                initial=dict(weights))  # fmt: skip
    assert resume.resume_fault(good) is None
    refit = json.dumps([dict(epoch=1, train_loss=0.5, train_accuracy=0.8, lr=1e-4, seconds=3.0)])  # no validation
    assert resume.resume_fault(dict(good, history=refit, done=[fold, dict(fold, weights=dict(weights))])) is None
    member = dict(means=torch.zeros(2, 4), whitening=torch.ones(4, 2), floor=torch.tensor(1.0))  # an ensemble's
    kept = dict(member=member, member_distances=torch.ones(3), member_head=torch.zeros(3), exposed_to={"drawn": 24})
    assert resume.resume_fault(dict(good, done=[dict(fold, **kept)])) is None
    for key, value, said in [
        ("finished", 0, "its training state.finished 0 is not true or false"),
        ("stage", -1, "its training state.stage -1 is not a whole number from 0"),
        ("best_state_dict", {"w": torch.ones(2, 3)}, "its best epoch's weights are not those of its network"),
        ("best_state_dict", dict(weights, w=torch.full((2, 3), np.nan)), "its best epoch's weights are not finite"),
        ("initial", {"w": torch.ones(2, 3)}, "its starting weights are not those of its network"),
        ("done", [dict(fold, weights={"w": torch.ones(2, 3)})], "its fold 1's weights are not those of its network"),
        ("done", [dict(fold, epoch=0)], "its fold 1 has no best epoch"),
        ("done", [dict(fold, logits=torch.zeros(3))], "its fold 1's logits are not a finite table"),
        ("done", [dict(fold, distances=torch.full((3,), np.nan))], "its fold 1's distances are not a finite table"),
        ("done", "none", "its folds done are not a list"),
        ("done", [dict(fold, member_distances=torch.zeros(3, 1))], "its fold 1's member_distances are not a finite"),
        ("done", [dict(fold, member_head=torch.full((3,), np.nan))], "its fold 1's member_head are not a finite"),
        ("done", [dict(fold, exposed_to={"drawn": -1})], "its fold 1's exposed_to['drawn'] -1 is not a whole number"),
        (
            "done",
            [dict(fold, member=dict(member, floor=torch.tensor(-1.0)))],
            "its fold 1's member measure is refused: its familiarity floor is not one finite number >= 0",
        ),  # fmt: skip
        ("best_logits", torch.zeros(5), "its best epoch's validation logits are not a finite table"),
        ("best_logits", torch.full((5, 2), np.inf), "its best epoch's validation logits are not a finite table"),
        ("best", "0.7", "its training state.best '0.7' is not a list of 2 items"),
        ("bad_epochs", -1, "its training state.bad_epochs -1 is not a whole number from 0"),
        ("stopped_early", "no", "its training state.stopped_early 'no' is not true or false"),
        ("optimizer", [1], "its training state.optimizer [1] is not a table"),
        ("history", "[{", "its history is not JSON"),
        ("history", "[" * 100_000 + "]" * 100_000, "its history is JSON nested too deeply to read"),  # RecursionError
        ("history", json.dumps([dict(epoch, roc_auc="high")]), "its history[0].roc_auc 'high' is not a finite number"),
        ("history", json.dumps({"epoch": 1}), "its history {'epoch': 1} is not a list"),
    ]:
        assert resume.resume_fault(dict(good, **{key: value})).startswith(said), (key, value)


def test_a_resumed_run_continues_in_its_own_checkpoint_and_beside_a_copy(tmp_path):
    """Reading a checkpoint never needs --overwrite: one the ledger proves ours is continued in; a copy (no record)
    and one changed since we wrote it are left as they are, the run writing beside them; --overwrite says replace."""
    ours = recorded(tmp_path / "last.pth", "resume checkpoint", "a resume checkpoint we wrote")
    assert resume.continued_in(str(ours)) == str(ours)
    (tmp_path / "copy.pth").write_text("a resume checkpoint copied here")
    assert resume.continued_in(str(tmp_path / "copy.pth")) == str(tmp_path / "copy.resumed.pth")
    assert resume.continued_in(str(tmp_path / "copy.pth"), overwrite=True) == str(tmp_path / "copy.pth")
    (tmp_path / "last.pth").write_text("changed since")
    assert resume.continued_in(str(ours)) == str(tmp_path / "last.resumed.pth")
    assert resume.continued_in(str(tmp_path / "none")) == str(tmp_path / "none")  # missing: the read says so
    assert sorted(os.listdir(tmp_path)) == sorted([ledger.NAME, "copy.pth", "last.pth"])  # nothing written


def test_the_best_epoch_is_kept_by_roc_auc_then_loss_and_patience_stops_the_run():
    """record_epoch keeps the weights and logits of the best epoch (a tie in ROC-AUC goes to the lower loss), and
    counts the epochs without a better one up to the patience."""
    net = torch.nn.Linear(2, 2)
    progress = resume.progress_of(None)
    found = [(0.7, 0.6), (0.8, 0.7), (0.8, 0.5), (0.6, 0.4), (0.75, 0.3)]
    for epoch, (auc, loss) in enumerate(found, 1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        resume.record_epoch(progress, dict(epoch=epoch, roc_auc=auc, val_loss=loss), net, np.full((3, 2), epoch), 2)
    assert progress["best_epoch"] == 3 and progress["best_state_dict"]["weight"][0, 0] == 3
    assert progress["best_logits"][0, 0] == 3 and progress["bad_epochs"] == 2 and progress["stopped_early"]
    assert resume.is_complete(progress, 9) and not resume.is_complete(progress, 9, go_on_after_a_stop=True)
    state = resume.resume_state(dict(progress, optimizer={}, schedule={}))
    assert json.loads(state["history"])[-1]["epoch"] == 5 and state["best_logits"].dtype == torch.float64
    resume.next_stage(progress, 1)  # a fold's start: its epochs, best and history anew
    assert (
        progress["stage"] == 1 and progress["epoch"] == 0 and progress["history"] == [] and "optimizer" not in progress
    )
