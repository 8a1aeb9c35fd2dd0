"""What a user reads of a model's answer, said once for predict.py and the page (web/app.js has a twin of each
function, of the same name in camelCase, that a test feeds the same cases): P against the threshold and when it is
borderline, what is withheld for a photo unlike the training photos and how what is shown anyway is marked, the
lesion types, the cautions a model file carries, what P assumes and what it means at a prevalence (PPV and NPV),
and the test and external figures in words (the card's summary and predict.py's 'Tested' lines)."""

import re

import numpy as np

from skinlesion import messages, metrics

BORDERLINE = 0.02  # a photo whose P(malignant) is this close to the threshold is reported as borderline
UNRELIABLE = "Unreliable: "  # what marks each line of an answer shown anyway for an unfamiliar photo
STRAYED = (  # the caution for an int8 model (export_onnx.py's twin) that its comparison did not clear
    "this int8 model's answers strayed from the full model's on its validation photos; use the full ONNX file"
)


def is_borderline(p, threshold, margin=BORDERLINE):
    """The rule: P(malignant) is borderline when it lies within margin of the threshold (at margin exactly it is
    not; a NaN is not: a P that is no probability is an error, never a label). p may be an array (one answer each);
    web/app.js's isBorderline is its twin."""
    found = np.abs(np.subtract(p, threshold)) < margin
    return bool(found) if np.ndim(found) == 0 else found


def decision_texts(p, threshold, margin):
    """P and the threshold with enough digits (3 to 6) to see which side P lies on, and 'borderline' where P lies
    within margin (margin) of the threshold, else ''. A P that differs from the threshold by less than 6
    digits show is said to lie 'just below' (or 'just above') it: never two equal numbers beside a benign label."""
    digits = next((d for d in range(3, 7) if f"{p:.{d}f}" != f"{threshold:.{d}f}"), 6)
    p_text, t_text = f"{p:.{digits}f}", f"{threshold:.{digits}f}"
    if p_text == t_text and p != threshold:
        p_text = f"just {'below' if p < threshold else 'above'} {t_text}"
    near = "borderline" if is_borderline(p, threshold, margin) else ""
    return p_text, t_text, near


def answer_shown(unfamiliar, asked):
    """Whether a photo's answer is shown (its P, P at a prevalence, PPV and NPV, the type, the Grad-CAM): not for a
    photo unlike the training photos, unless the user asks for it anyway (--show-unfamiliar, the page's button)."""
    return asked or not unfamiliar


def marked(text, unfamiliar):
    """A line of a photo's answer, marked unreliable where the photo is unfamiliar (shown only because asked)."""
    return f"{UNRELIABLE}{text}" if unfamiliar else text


def likely_types(probabilities, meta):
    """[(type name, P)] of a lesion-type model, most likely first (the original label values where known)."""
    names = meta.get("class_names") or meta["classes"]
    order = np.argsort(-np.asarray(probabilities), kind="stable")
    return [(messages.printable(names[i]), float(probabilities[i])) for i in order]


def model_cautions(meta):
    """What the model file says about itself that a reader must know: at chance, a useless operating point."""
    cautions = []
    if meta.get("at_chance"):
        ci = meta.get("val_auc_ci95")
        interval = f" (its validation ROC-AUC 95% interval {ci[0]:.3f}-{ci[1]:.3f} includes 0.5)" if ci else ""
        cautions.append(f"this model cannot be told from chance{interval}; do not rely on its predictions")
    op = meta.get("operating_point")
    warning = metrics.operating_point_warning(op) if op else None
    if warning:
        cautions.append(warning + " on its validation photos")
    weak = None if meta.get("at_chance") else metrics.weak_model_warning(op, meta.get("val_auc_ci95"))
    if weak:
        cautions.append(weak + "; read its answers as a rough guide at best")
    quantised = meta.get("quantised")
    if isinstance(quantised, dict) and not quantised.get("within_tolerance"):
        cautions.append(STRAYED)
    return cautions


def prevalence_texts(meta, prevalence, threshold_given, tested=None):
    """(what P assumes (with the hint to pass --prevalence where none was), what P means at --prevalence: PPV and
    NPV of the calls there, or None). PPV and NPV come from the test sensitivity and specificity at the threshold
    where the model has them (tested), the validation ones beside them, each labelled."""
    prior = meta.get("prior_malignant")
    if prior is None:  # an earlier model file: nothing to say
        return None, None
    assumes = f"P(malignant) assumes about {prior:.0%} of photos are malignant, as in the training photos"
    if prevalence is None:
        assumes += "; where they are rarer or more common, pass --prevalence (e.g. --prevalence 0.05)"
    figures = [(split, found) for split, found in (("test", tested), ("validation", meta.get("operating_point")))]
    figures = [(split, found) for split, found in figures if found]
    if prevalence is None or not figures or threshold_given:
        return assumes, None
    said = []
    for split, found in figures:
        ppv, npv = metrics.predictive_values(found["sensitivity"], found["specificity"], prevalence)
        said.append(
            f"from the {split} sensitivity and specificity at this threshold, a 'malignant' call is right "
            f"{ppv:.0%} of the time (PPV) and a 'benign' call {npv:.0%} of the time (NPV)"
        )
    return assumes, f"at a prevalence of {messages.percent_text(prevalence)}, " + "; ".join(said)


def tested_figures(tested):
    """{metric: (value, (low, high) or None)} from the test results read back from a card's front matter
    (card.test_results: the interval is in each result's name)."""
    found = {}
    for key, (value, name) in tested.items():
        ci = re.search(r"95% CI ([\d.]+)-([\d.]+)", name)
        found[key] = (value, (float(ci[1]), float(ci[2])) if ci else None)
    return found


def evaluation_figures(evaluation):
    """{metric: (value, (low, high) or None)} of evaluate.py's results (as the card keeps them) at the threshold:
    sensitivity, specificity, ROC-AUC (an interval of NaN, as --n-bootstrap 0 leaves, is None)."""
    found = {}
    for key in ("sensitivity", "specificity", "roc_auc"):
        found[key] = (evaluation["metrics"][key], metrics.known_interval((evaluation.get("ci95") or {}).get(key)))
    return found


def where_tested(name, evaluation):
    """'on NAME (598 photos, 11% malignant)': an external data set, with its photos where evaluate.py counted them."""
    found = evaluation.get("photos")
    counts = f" ({found['n_photos']} photos, {found['malignant_share']:.0%} malignant)" if found else ""
    return f"on {messages.printable(name)}{counts}"


def external_texts(externals):
    """['on NAME (598 photos, 11% malignant), at the same threshold, it caught ...'] of each external data set's
    results (as the card keeps them), for predict.py's and the page's 'External validation' lines."""
    found = []
    for name, evaluation in (externals or {}).items():
        try:
            found.append(tested_text(evaluation_figures(evaluation), where_tested(name, evaluation)))
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):  # an earlier card's shape: left out
            continue
    return found


def tested_text(figures, where="on the test photos"):
    """The test figures {metric: (value, (low, high) or None)} in words, saying the brackets are 95% intervals."""
    parts = []
    for key, words in (("sensitivity", "caught {} of the malignant"), ("specificity", "cleared {} of the benign")):
        if key in figures:
            value, ci = figures[key]
            parts.append(words.format(metrics.percent_range(value, ci) if ci else f"{value:.0%}"))
    if "roc_auc" in figures:
        value, ci = figures["roc_auc"]
        parts.append(f"ROC-AUC {value:.2f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else ""))
    said = " (brackets: 95% intervals)" if any(ci for _, ci in figures.values()) else ""  # none: --n-bootstrap 0
    return f"{where}, at the same threshold, it " + ", ".join(parts) + said
