"""Probabilities a user can trust: the calibration that keeps a weak model near the class prior
(fitted on held-out training prompts, rows the model did not train on) and the split that holds those
prompts out; the floor for a class the training rows never held; a scikit-learn classifier's output
spread over all three classes. Shared by the models and the blenders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ensemble.core.metrics import clip_normalize, log_loss

#: Fewer held-out rows than this cannot tell a model from the prior (nor pick its checkpoint): the
#: fold predicts the prior. Measured: on 100 real Kaggle rows (16 held-out rows per fold) a dual tower
#: whose checkpoint and calibration passed on 17 rows scored 1.235 on its fold against a prior of 1.098.
MIN_CALIBRATION_ROWS = 30
Z_ONE_SIDED_95 = 1.645


def floor_absent_classes(proba: np.ndarray, classes, n_train: int) -> np.ndarray:
    """A class the `n_train` training rows never held (no ties in binary preference data) gets
    1 / (n_train + 3), the add-one (Laplace) estimate of a class seen 0 times in n rows, the same
    smoothing as class_prior; the seen classes share the rest in their own ratios. A model trained
    without ties then says "a tie is rare, not impossible": a tie costs log(n + 3) nats, not ~34."""
    absent = [k for k in range(3) if k not in set(classes or range(3))]
    if not absent or not len(proba):
        return proba
    seen = [k for k in range(3) if k not in absent]
    floor = 1.0 / (max(int(n_train), 0) + 3.0)
    out = np.empty_like(np.asarray(proba, dtype=np.float64))
    mass = np.clip(proba[:, seen], 1e-12, None)
    out[:, seen] = (1.0 - floor * len(absent)) * mass / mass.sum(axis=1, keepdims=True)
    out[:, absent] = floor
    return out


def logistic_coef3(clf) -> tuple[np.ndarray, np.ndarray]:
    """(3, d) weights and (3,) biases of a fitted scikit-learn LogisticRegression as softmax logits over
    all three classes, whichever classes it saw: with two, scikit-learn keeps one row (the logit of
    classes_[1] against classes_[0]), which is the softmax with class_[0]'s logit at 0. An absent class
    gets logit -30 (its probability is set by floor_absent_classes)."""
    coef, intercept = np.zeros((3, clf.coef_.shape[1])), np.full(3, -30.0)
    if len(clf.classes_) == 2:
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        intercept[clf.classes_[0]] = 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return coef, intercept


def proba3(clf, x: np.ndarray) -> np.ndarray:
    """predict_proba of a fitted scikit-learn classifier (or pipeline) over all three classes, an
    absent class at 1e-6 (inner-CV scores only: a training split may lack a class)."""
    out = np.full((len(x), 3), 1e-6)
    out[:, clf.classes_] = clf.predict_proba(x)
    return out / out.sum(axis=1, keepdims=True)


def calibration_split(frame, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, calibration rows) of a training frame: whole prompts held out, so the calibration
    (and any checkpoint choice) sees prompts the model did not train on. No split under 10 prompts."""
    from sklearn.model_selection import GroupShuffleSplit

    from ensemble.core.folds import labelled_splits, prompt_groups
    from ensemble.core.targets import labelled_rows

    # pseudo-labelled rows never calibrate; one asking a held-out prompt neither calibrates nor trains (its
    # teacher saw that prompt's labels, so training on it would flatter the held-out score)
    groups, labelled = prompt_groups(frame), labelled_rows(frame)
    if frac <= 0 or len(np.unique(groups[labelled])) < 10:
        return np.arange(len(frame)), np.arange(0)
    split = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
    return labelled_splits(groups, labelled, lambda g: split.split(np.zeros(len(g)), groups=g))[0]


def class_prior(labels: np.ndarray, symmetric: bool) -> tuple[float, float, float]:
    """Smoothed class frequencies; `symmetric` gives A and B their mean (a swap-averaged model is
    A/B symmetric, and so must be the prior it shrinks toward)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=3) + 1.0
    if symmetric:
        counts[:2] = counts[:2].mean()
    return tuple(float(c) for c in counts / counts.sum())


@dataclass
class Calibration:
    """p -> (1 - shrink) * softmax(log p / temperature) + shrink * prior. With shrink = 1 it is the
    class prior, so a model that learned nothing says so instead of adding confident noise."""

    temperature: float = 1.0
    shrink: float = 0.0
    prior: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    rows: int = 0
    #: the numbers of the gate fit_calibration applied (mean gain, penalty, standard error, lower bound)
    gate: dict | None = None

    def apply(self, proba: np.ndarray) -> np.ndarray:
        logp = np.log(clip_normalize(proba, 1e-12)) / self.temperature
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        p /= p.sum(axis=1, keepdims=True)
        return (1.0 - self.shrink) * p + self.shrink * np.asarray(self.prior)[None, :]

    def to_json(self) -> dict:
        out = {"temperature": self.temperature, "shrink": self.shrink, "prior": list(self.prior), "rows": self.rows}
        return {**out, "gate": self.gate} if self.gate is not None else out

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        return cls(float(d["temperature"]), float(d["shrink"]), tuple(float(v) for v in d["prior"]),
                   int(d.get("rows", 0)), d.get("gate"))


def fit_calibration(proba: np.ndarray, y: np.ndarray, prior) -> Calibration:
    """Temperature (in [0.5, 20]: a few hundred rows cannot support sharper) and shrinkage toward
    `prior` minimising log loss on held-out rows; the prior itself unless that beats it clearly."""
    from scipy.optimize import minimize
    from scipy.special import expit

    prior = tuple(float(v) for v in prior)
    if len(y) < MIN_CALIBRATION_ROWS:  # too few held-out rows to show that the model beats the prior
        print(f"only {len(y)} held-out calibration rows (< {MIN_CALIBRATION_ROWS}): this fold predicts the "
              f"class prior", flush=True)
        return Calibration(1.0, 1.0, prior, len(y))

    def unpack(v) -> Calibration:
        return Calibration(float(np.exp(np.clip(v[0], np.log(0.5), np.log(20.0)))), float(expit(v[1])), prior, len(y))

    def loss(v) -> float:
        return log_loss(y, unpack(v).apply(proba))

    best = min((minimize(loss, np.array(x0), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
                for x0 in ([0.0, -4.0], [0.7, 0.0])), key=lambda r: r.fun)
    fitted = unpack(best.x)
    # a model whose gain over the prior on these rows is not clearly positive predicts the prior: the
    # gain must survive the optimism of fitting two numbers to them (AIC: 2 / n nats) and stay above 0
    # at the one-sided 95% lower bound of its mean (1.645 standard errors), because these rows often chose
    # something else too (LightGBM's stopping round, the dual tower's checkpoint). On 80 rows (Kaggle's
    # first 100, per fold) a LightGBM whose gain cleared 2/n + 1 SE scored 1.259 on its fold (prior 1.098).
    n = len(y)
    gains = np.log(fitted.apply(proba)[np.arange(n), y]) - np.log(np.asarray(prior)[y])
    gain, se = float(gains.mean()), float(gains.std(ddof=1) / np.sqrt(n))
    bound = gain - 2.0 / n - Z_ONE_SIDED_95 * se
    gate = {"rows": n, "gain": round(gain, 6), "penalty": round(2.0 / n, 6), "se": round(se, 6),
            "bound": round(bound, 6)}
    if bound <= 0:
        print(f"calibration gate: gain over the class prior {gain:+.4f} nats on {n} held-out rows, "
              f"- 2/n {2.0 / n:.4f} - {Z_ONE_SIDED_95} SE {Z_ONE_SIDED_95 * se:.4f} = {bound:+.4f} <= 0: "
              f"this fold predicts the class prior", flush=True)
        return Calibration(1.0, 1.0, prior, n, gate)
    return dataclasses.replace(fitted, gate=gate)
