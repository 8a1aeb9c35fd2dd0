"""What evaluate.py reports of a model on a set of photos besides its metrics: the calibration before and after
(with a warning where it made P worse), the stored operating point against what it reached (with a warning where
the target lies outside the interval), every figure outside what validation stated, ROC-AUC by subgroup where
there are enough photos, test-time augmentation against the plain prediction, the photos unlike the training
photos (counted and listed), and who the photos are (their count, malignant share, image types). Each takes the
labels, P(malignant) or the familiarity distances, never the model."""

import numpy as np

from skinlesion import card, familiarity, isic, messages, metrics


def calibration_report(y, before, after, fitted, args):
    """ECE, Brier score and log-loss of P(malignant) before and after the stored calibration, with intervals;
    a warning where the test ECE is worse after it."""
    report = {"method": (fitted or {}).get("method", "none")}
    for when, p in (("before", before), ("after", after)):
        for key, measure in (
            ("ece", metrics.ece),
            ("brier", metrics.brier),
            ("log_loss", metrics.log_loss),
        ):
            report[f"{key}_{when}"] = float(measure(y, p))
            if args.n_bootstrap:
                ci = metrics.bootstrap_ci(y, p, args.n_bootstrap, args.seed, metric_fn=measure)["value"]
                report[f"{key}_{when}_ci95"] = list(ci)
        report[f"bins_{when}"] = metrics.reliability(y, p)
    report["ece_after_if_calibrated"] = metrics.calibrated_ece_limit(after, seed=args.seed)
    if report["method"] != "none" and report["ece_after"] > report["ece_before"]:
        report["warning"] = (
            f"the calibration made P(malignant) less well calibrated on these photos (ECE {report['ece_before']:.3f} "
            f"before, {report['ece_after']:.3f} after): read P as a rough score here, not a chance"
        )
    return report


def operating_report(y, p, meta, scores, ci):
    """The stored operating point against what it reached on these photos; a warning when it did not hold."""
    op = meta.get("operating_point") or dict(target_sensitivity=0.0)
    target, low = op["target_sensitivity"], ci["sensitivity"]
    found = dict(
        op,
        test_sensitivity=scores["sensitivity"],
        test_sensitivity_ci95=list(low),
        test_specificity=scores["specificity"],
        test_specificity_ci95=list(ci["specificity"]),
    )
    known = bool(np.isfinite(low).all())  # --n-bootstrap 0: no interval, so neither inside nor outside it
    outside = bool(target) and known and not (low[0] <= target <= low[1])
    found["target_outside_interval"] = outside if known else None
    if outside:
        found["warning"] = (
            f"the target sensitivity {target:.2f} lies outside the test sensitivity's 95% interval "
            f"({low[0]:.2f}-{low[1]:.2f}): the operating point chosen on {card.chosen_on(meta)[2]} did not hold here"
        )
    test_op = dict(sensitivity=scores["sensitivity"], specificity=scores["specificity"])
    found["flags"] = metrics.operating_point_warning(test_op)
    return found


def figures_outside(y, scores, cal, meta, photos="test"):
    """A warning for each figure on these photos (labels y) that lies outside what validation (or the folds, out of
    fold) stated: the sensitivity and specificity at the threshold outside the 95% interval stated for them, and
    the ECE (ece_outside). Each says whether the figure also lies outside what this many photos can show
    (metrics.expected_share): then it did not hold; else only more photos can tell."""
    op, found = meta.get("operating_point") or {}, []
    source = card.chosen_on(meta)[0]  # validation, or out-of-fold: the photos that stated the figures
    stated_by = "the folds" if source == "out-of-fold" else "validation"
    y = np.asarray(y)
    counts = dict(sensitivity=("malignant", int(np.sum(y == 1))), specificity=("benign", int(np.sum(y != 1))))
    for key in ("sensitivity", "specificity"):
        stated = op.get(f"{key}_ci95")
        if stated and not stated[0] <= scores[key] <= stated[1]:
            side, n_new = counts[key]
            said = f"the {photos} {key} {scores[key]:.0%} lies outside the 95% interval {stated_by} stated for it "
            said += f"({metrics.percent_range(op[key], stated)})"
            found.append(said + noise_text(op[key], op.get(f"n_{side}"), n_new, scores[key], side))
    said = ece_outside(len(y), cal, (meta.get("calibration") or {}).get("val_ece_after"), source, photos)
    return found + [said] if said else found


def ece_outside(n_photos, cal, val_ece, source, photos):
    """The ECE's warning, or None: validation's (or the out-of-fold) ECE outside the interval of the ECE on these
    n_photos, said to hold or not by whether that ECE is above what a calibrated P scores on them 95 times in 100
    (cal["ece_after_if_calibrated"]); or that alone, which is calibration these photos show to be off. No
    interval (--n-bootstrap 0) and no limit: nothing to say."""
    low, high = cal.get("ece_after_ci95") or (float("nan"),) * 2
    ece, limit = cal["ece_after"], cal.get("ece_after_if_calibrated")
    beyond = limit is not None and ece > limit
    if val_ece is not None and low == low and not low <= val_ece <= high:
        said = f"the {source} ECE {val_ece:.3f} lies outside the 95% interval of the {photos} ECE ({ece:.3f}, "
        if beyond or limit is None:
            return said + f"{low:.3f}-{high:.3f}): the calibration did not hold here"
        return said + (
            f"{low:.3f}-{high:.3f}), though a calibrated P scores up to {limit:.3f} on these {n_photos} photos "
            "(95 times in 100): more photos will tell"
        )
    if beyond:
        return (
            f"the {photos} ECE {ece:.3f} is more than a calibrated P scores on these {n_photos} photos 95 times in "
            f"100 ({limit:.3f}): the calibration did not hold here"
        )
    return None


def noise_text(stated, n_stated, n_new, value, side):
    """How a share outside its stated interval ends its warning: outside what n_new photos can show as well (it
    did not hold), or inside it (more photos would tell); nothing to say of the noise without the stated count."""
    expected = metrics.expected_share(stated, n_stated, n_new)
    if expected is None:
        return ": it did not hold here"
    shown = f"{100 * expected[0]:.0f}-{expected[1]:.0%}"
    if expected[0] <= value <= expected[1]:
        return f", though {n_new} {side} photos can show {shown} there (95 times in 100): more photos will tell"
    return f" and beyond what {n_new} {side} photos can show there ({shown}): it did not hold here"


def subgroups(y, p, rows, args):
    """{factor: {value: photos, sides, ROC-AUC with CI or 'too few photos to report'}} for the subgroup factors
    whose column the manifest has; None where there is no manifest for these photos."""
    if rows is None:
        return {}
    values = isic.factor_values(rows)
    found = {}
    for factor in isic.SUBGROUPS:
        column = isic.FACTORS[factor]
        if column not in rows and not (factor == "body site" and "anatom_site_general" in rows):
            continue
        found[factor] = {}
        for value in sorted(set(values[factor]), key=lambda v: (v == "", v)):
            at = (values[factor] == value).to_numpy()
            group = dict(photos=int(at.sum()), benign=int((y[at] == 0).sum()), malignant=int((y[at] == 1).sum()))
            if min(group["benign"], group["malignant"]) < card.MIN_PER_CLASS:
                group["text"] = "too few photos to report"
            else:
                group["roc_auc"] = float(metrics.roc_auc(y[at], p[at]))
                low, high = metrics.bootstrap_ci(
                    y[at], p[at], args.n_bootstrap or 200, args.seed, metric_fn=metrics.roc_auc
                )["value"]
                group.update(roc_auc_ci95=[low, high], text=f"{group['roc_auc']:.3f} ({low:.3f}-{high:.3f})")
            found[factor][value or "unknown"] = group
    return found


def compare_tta(y, plain, flipped, threshold, n, seed):
    """Plain vs flip-averaged predictions on the same photos, with a paired bootstrap CI of the AUC gain."""
    keys = ("roc_auc", "accuracy", "sensitivity", "specificity")
    result = {
        name: {k: metrics.binary_metrics(y, p, threshold)[k] for k in keys}
        for name, p in (("plain", plain), ("tta", flipped))
    }

    def gain(y, p):
        return metrics.roc_auc(y, p[..., 1]) - metrics.roc_auc(y, p[..., 0])

    low, high = metrics.bootstrap_ci(y, np.stack([plain, flipped], 1), n, seed, metric_fn=gain)["value"]
    verdict = "makes no clear difference to the ROC-AUC"
    if low > 0:
        verdict = "helps the ROC-AUC"
    elif high < 0:
        verdict = "hurts the ROC-AUC"
    result.update(
        roc_auc_gain=result["tta"]["roc_auc"] - result["plain"]["roc_auc"],
        roc_auc_gain_ci95=[low, high],
        verdict=f"TTA {verdict} on this split",
    )
    moved = [k for k in ("sensitivity", "specificity") if result["tta"][k] != result["plain"][k]]
    if moved:  # the threshold and the calibration were chosen without TTA: say what changed at it, claim no more
        result["threshold_note"] = (
            "at the threshold chosen without TTA, "
            + " and ".join(f"{k} {result['plain'][k]:.3f} -> {result['tta'][k]:.3f}" for k in moved)
            + "; TTA has no threshold or calibration of its own (predict.py --tta uses this one)"
        )
    print(f"\nTTA vs plain on the same images (threshold {threshold:.4f})\n{'':<14}{'plain':>8}{'TTA':>8}")
    for key in keys:
        print(f"{key.replace('roc_auc', 'ROC-AUC'):<14}{result['plain'][key]:>8.3f}{result['tta'][key]:>8.3f}")
    print(f"{result['verdict']}: ROC-AUC change {result['roc_auc_gain']:+.3f} (95% CI {low:+.3f} to {high:+.3f})")
    if "threshold_note" in result:
        print(f"but {result['threshold_note']}")
    return result


def familiarity_report(distances, meta):
    """How many of the photos are unfamiliar to the model (predict.py gives them no answer), or None for a model
    without the measure."""
    if distances is None:
        return None
    flagged = int(sum(familiarity.unfamiliar(d, meta) for d in distances))
    found = {k: v for k, v in meta["familiarity"].items() if k not in familiarity.ARRAYS}
    return dict(found, n_photos=len(distances), n_unfamiliar=flagged, share_unfamiliar=flagged / len(distances))


def unfamiliar_photos(paths, names, distances, meta):
    """The photos predict.py would call unfamiliar, furthest first: [{path, true (label), distance}]."""
    if distances is None:
        return []
    flagged = [i for i, d in enumerate(distances) if familiarity.unfamiliar(d, meta)]
    flagged.sort(key=lambda i: -np.nan_to_num(distances[i], nan=np.inf))
    return [dict(path=str(paths[i]), true=str(names[i]), distance=float(distances[i])) for i in flagged]


def photos_described(y, rows, name, source):
    """Who the photos are: their count, malignant share and image types (from the manifest or the export's
    metadata; unknown without), and how the pictures name them."""
    n = len(y)
    types = {"unknown": n}
    if rows is not None and "image_type" in rows:
        types = dict(rows.image_type.replace("", "unknown").value_counts())
    split = f"external validation: {name}" if name else "test split"
    shown = f"{split} ({messages.printable(source)}), n = {n}: {int(y.sum())} malignant"
    return dict(n_photos=n, malignant_share=float(y.mean()), image_types={str(k): int(v) for k, v in types.items()},
                shown=shown)  # fmt: skip
