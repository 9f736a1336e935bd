"""CountVectorizer + length-feature LightGBM (the 0.2 of the classic 0.2 / 0.8 blend).

One vocabulary serves both responses, so swapping A and B swaps whole feature blocks: the swap
augmentation and swap test-time averaging then make the model position-unbiased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import lightgbm as lgb  # OMP_WAIT_POLICY=PASSIVE is set by the package's __init__, before lightgbm loads libgomp
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from ensemble.core.calibration import Calibration, class_prior, fit_calibration
from ensemble.core.config import AnyOf, Choice, Range
from ensemble.core.data import as_turns, swap_ab, unswap_proba
from ensemble.core.features import feature_names, numeric_features
from ensemble.core.targets import DistillConfig, labelled_rows, swap_targets, training_targets, weighted_copies
from ensemble.models.base import LEARNS_WITH, LIBRARIES, BaseModel, FoldBudget


@dataclass
class VectorizerConfig:
    ngram_max: int = 2
    max_features: int = 1000  # per vocabulary (responses, prompt)
    min_df: int = 3
    max_chars: int = 4000  # text cut before counting: long tails add cost, not signal
    prompt: bool = True  # also count prompt n-grams
    binary: bool = False

    constraints: ClassVar[dict] = {"ngram_max": Range(1), "max_features": Range(1), "min_df": Range(1),
                                   "max_chars": Range(1)}


@dataclass
class LGBMConfig(FoldBudget):
    vectorizer: VectorizerConfig = field(default_factory=VectorizerConfig)
    swap_augment: bool = True
    swap_tta: bool = True
    swap_tta_share: float = 1.0  # with swap_tta: share of battles (least certain first) given the swapped pass
    n_estimators: int = 500  # a cap: bounds the stage's time (each round costs ~0.16 s at Kaggle scale)
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 20
    feature_fraction: float = 1.0  # per tree
    # per split: as a regulariser like feature_fraction, far cheaper with sparse counts
    feature_fraction_bynode: float = 0.5
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30  # 0 = always n_estimators rounds
    # where early stopping looks: inner = the training part only (prompt-grouped inner folds, or one
    # held-out share of its prompts), then a refit on all training rows for the rounds found there;
    # valid = the fold's valid rows, i.e. its OOF rows: optimistic (PandaLM: 0.818 vs 0.832 honest)
    early_stopping: str = "inner"
    # inner: k prompt-grouped folds (~k x one fit), 0: one held-out share, auto
    early_stopping_folds: int | str = "auto"
    early_stopping_frac: float = 0.2  # inner with early_stopping_folds 0: share of the training prompts held out
    # an encoder (e.g. embedded:minilm) whose prompt/answer cosine similarities join the features; "" = off
    embeddings: str = ""
    embed_max_len: int = 256  # tokens per text for those embeddings
    n_jobs: int = 2
    seed: int = 42
    distill: DistillConfig = field(default_factory=DistillConfig)  # teachers' soft labels (ensemble.pipeline.distill)

    constraints: ClassVar[dict] = {"swap_tta_share": Range(0.0, 1.0),
        "n_estimators": Range(1), "learning_rate": Range(0, low_open=True), "num_leaves": Range(2),
        "min_child_samples": Range(0), "feature_fraction": Range(0, 1, low_open=True),
        "feature_fraction_bynode": Range(0, 1, low_open=True), "bagging_fraction": Range(0, 1, low_open=True),
        "bagging_freq": Range(0), "lambda_l2": Range(0), "early_stopping_rounds": Range(0), "n_jobs": Range(-1),
        "early_stopping": Choice("inner", "valid"), "early_stopping_frac": Range(0, 0.9, low_open=True),
        "early_stopping_folds": AnyOf(Choice("auto", 0), Range(2))}  # 1 fold would be no split


VOCAB_FILE = "vocabularies.json"
SIMILARITY_NAMES = ("emb_prompt_a", "emb_prompt_b", "emb_prompt_diff", "emb_a_b")
CALIBRATION_FILE = "calibration.json"
#: early_stopping_folds auto: inner folds below this many training prompts, one held-out share from it on
AUTO_HOLDOUT_PROMPTS = 2000


def vocabulary_json(vec: CountVectorizer | None) -> list[str] | None:
    """A fitted vocabulary as its terms in column order: plain JSON (no pickle to load at submit), the
    same bytes on every run (DVC hashes the fold folder)."""
    if vec is None:
        return None
    return [term for term, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]


def vectorizer(cfg: VectorizerConfig, terms: list[str] | None = None) -> CountVectorizer:
    """The CountVectorizer of `cfg`, to fit, or fixed to a saved vocabulary (`terms`, in column order)."""
    vocabulary = {t: i for i, t in enumerate(terms)} if terms is not None else None
    return CountVectorizer(ngram_range=(1, cfg.ngram_max), max_features=cfg.max_features, min_df=cfg.min_df,
                           binary=cfg.binary, dtype=np.float32, vocabulary=vocabulary)


def _texts(frame: pd.DataFrame, column: str, max_chars: int) -> list[str]:
    return ["\n".join(as_turns(cell))[:max_chars] for cell in frame[column]]


class LGBMModel(BaseModel):
    name = "lgbm"
    Config = LGBMConfig
    fitted_attr = "booster"
    # n_jobs: LightGBM runs deterministic and row-wise, so the thread count leaves the model unchanged
    runtime_keys = ("swap_tta_share", "n_jobs")
    learns_with = (*LEARNS_WITH, "ensemble.models.lgbm", "ensemble.models.lgbm.model", "ensemble.core.features")
    libraries = (*LIBRARIES, "lightgbm")
    #: what the similarity features (`embeddings`) add: the sentence encoder's code and libraries
    EMBEDDING_CODE = ("ensemble.nn.embed", "ensemble.nn.hf", "ensemble.nn.batching")
    EMBEDDING_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors")

    booster: lgb.Booster | None = None

    # --- features ---------------------------------------------------------------------------
    # Counting n-grams is the costly part, so each text is counted once: the A/B-swapped matrix
    # reuses the same count blocks in the other order (only the cheap numeric block is redone).
    def _fit_vectorizers(self, frame: pd.DataFrame) -> tuple:
        """Fit the vocabularies on `frame` and return its count blocks (fit_transform: one pass)."""
        vc = self.config.vectorizer
        a_texts, b_texts = _texts(frame, "response_a", vc.max_chars), _texts(frame, "response_b", vc.max_chars)
        self.response_vec = vectorizer(vc)
        both = self.response_vec.fit_transform(a_texts + b_texts).tocsr()
        a, b = both[: len(frame)], both[len(frame):]
        p = None
        if vc.prompt:
            self.prompt_vec = vectorizer(vc)
            p = self.prompt_vec.fit_transform(_texts(frame, "prompt", vc.max_chars)).tocsr()
        else:
            self.prompt_vec = None
        return a, b, p

    def _counts(self, frame: pd.DataFrame) -> tuple:
        vc = self.config.vectorizer
        a = self.response_vec.transform(_texts(frame, "response_a", vc.max_chars))
        b = self.response_vec.transform(_texts(frame, "response_b", vc.max_chars))
        p = self.prompt_vec.transform(_texts(frame, "prompt", vc.max_chars)) if self.prompt_vec is not None else None
        return a, b, p

    def code_modules(self) -> tuple[str, ...]:
        return (*self.learns_with, *self.EMBEDDING_CODE) if self.config.embeddings else self.learns_with

    def library_names(self) -> tuple[str, ...]:
        return (*self.libraries, *self.EMBEDDING_LIBRARIES) if self.config.embeddings else self.libraries

    def learns_from_valid(self) -> bool:
        return bool(self.config.early_stopping_rounds) and self.config.early_stopping == "valid"

    def backbone_identity(self) -> str | None:
        """The encoder behind the similarity features (when on): its weights' digest, once per run."""
        if not self.config.embeddings:
            return None
        from ensemble.core.fingerprint import backbone_digest
        from ensemble.nn.hf import resolve_pretrained

        store = self.cache.store("embed.identity")
        if self.config.embeddings not in store:
            store[self.config.embeddings] = backbone_digest(resolve_pretrained(self.config.embeddings))
        return store[self.config.embeddings]

    def _similarities(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, 4): cos(prompt, A), cos(prompt, B), their difference, cos(A, B) of unit sentence embeddings
        (a swap exchanges the first two, negates the third, keeps the fourth)."""
        from ensemble.nn.embed import SentenceEncoder

        encoder = SentenceEncoder(self.config.embeddings, self.config.embed_max_len, self.cache)
        texts = {c: ["\n".join(as_turns(t)) for t in frame[c]] for c in ("prompt", "response_a", "response_b")}
        n = len(frame)
        e = encoder.encode(texts["prompt"] + texts["response_a"] + texts["response_b"], self.backbone_identity())
        ep, ea, eb = e[:n], e[n:2 * n], e[2 * n:]
        pa, pb, ab = (ep * ea).sum(1), (ep * eb).sum(1), (ea * eb).sum(1)
        return np.column_stack([pa, pb, pa - pb, ab]).astype(np.float32)

    def _assemble(self, frame: pd.DataFrame, a, b, p) -> sp.csr_matrix:
        numeric = numeric_features(frame, self.cache).to_numpy(np.float32)
        if self.config.embeddings:
            numeric = np.hstack([numeric, self._similarities(frame)])
        blocks = [sp.csr_matrix(numeric), a, b, a - b]
        if p is not None:
            blocks.append(p)
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def _matrices(self, frame: pd.DataFrame, swapped: bool, counts: tuple | None = None):
        """The battle matrix and, when `swapped`, the matrix of the A/B-swapped battles (else None)."""
        a, b, p = counts if counts is not None else self._counts(frame)
        x = self._assemble(frame, a, b, p)
        return x, (self._assemble(swap_ab(frame), b, a, p) if swapped else None)

    def _feature_names(self) -> list[str]:
        names = [f"num_{c}" for c in feature_names()] + (list(SIMILARITY_NAMES) if self.config.embeddings else [])
        vocab = self.response_vec.get_feature_names_out()
        names += [f"a_{t}" for t in vocab] + [f"b_{t}" for t in vocab] + [f"d_{t}" for t in vocab]
        if self.prompt_vec is not None:
            names += [f"p_{t}" for t in self.prompt_vec.get_feature_names_out()]
        return [n.replace(" ", "_") for n in names]

    def _stacked(self, x, x_swapped, t: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray | None]:
        """(matrix, labels, weights): the battles, and below them their A/B swaps when swap_augment. Soft
        targets t (n, 3) (distillation, pseudo-labels) make three weighted copies of that matrix, one per
        class (ensemble.core.targets.weighted_copies); hard labels need no weights."""
        if self.config.swap_augment:
            x, t = sp.vstack([x, x_swapped], format="csr"), np.concatenate([t, swap_targets(t)])
        if t.ndim == 1:
            return x, t, None
        rows, labels, weights = weighted_copies(t)
        return x[rows], labels, weights

    def lgb_params(self) -> dict:
        """LightGBM's params for this config (bench/bench_lgbm_cost.py times rounds with them)."""
        c = self.config
        return {
            "objective": "multiclass", "num_class": 3, "metric": "multi_logloss",
            "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
            "min_child_samples": c.min_child_samples, "feature_fraction": c.feature_fraction,
            "feature_fraction_bynode": c.feature_fraction_bynode,
            "bagging_fraction": c.bagging_fraction, "bagging_freq": c.bagging_freq,
            "lambda_l2": c.lambda_l2, "num_threads": c.n_jobs, "seed": c.seed,
            "deterministic": True, "force_row_wise": True, "verbosity": -1,
        }

    # --- estimator API -----------------------------------------------------------------------
    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        """Boost on the training rows; the rounds (early stopping) and a calibration toward the class
        prior are chosen on held-out training prompts only (inner folds, or one held-out share at scale):
        a fit that learned too little to beat the prior there predicts the prior."""
        c = self.config
        y, labelled = train["label"].to_numpy(), labelled_rows(train)
        x, x_swapped = self._matrices(train, c.swap_augment or c.swap_tta, self._fit_vectorizers(train))
        xa, ya, wa = self._stacked(x, x_swapped, training_targets(train))
        params, names = self.lgb_params(), self._feature_names()
        self.calibration = Calibration(prior=class_prior(y[labelled], symmetric=c.swap_tta))  # identity until fitted
        plan = self._inner_plan(train) if c.early_stopping_rounds and c.early_stopping == "inner" else None
        if c.early_stopping_rounds and c.early_stopping == "valid" and valid is not None and len(valid):
            xv, xv_swapped = self._matrices(valid, c.swap_augment)  # "valid": the OOF rows choose (optimistic)
            dtrain = lgb.Dataset(xa, ya, weight=wa, feature_name=names, free_raw_data=True)
            xs, ys, _ = self._stacked(xv, xv_swapped, valid["label"].to_numpy())
            dvalid = lgb.Dataset(xs, ys, reference=dtrain)
            self.booster = lgb.train(params, dtrain, num_boost_round=c.n_estimators, valid_sets=[dvalid],
                                     callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)])
            return
        if plan is None:  # no early stopping, or under 10 prompts: all rounds, no calibration
            self.booster = lgb.train(params, lgb.Dataset(xa, ya, weight=wa, feature_name=names),
                                     num_boost_round=c.n_estimators)
            return
        n, stop = len(train), lgb.early_stopping(c.early_stopping_rounds, verbose=False)
        m = 2 * n if c.swap_augment else n  # rows of one copy of the training matrix

        def rows(r):  # a row's swapped copy sits n rows below it, its class copies m rows apart
            r = np.concatenate([r, r + n]) if c.swap_augment else r
            return np.concatenate([r, r + m, r + 2 * m]) if wa is not None else r

        def dataset(r=None, **kw):
            if r is None:
                return lgb.Dataset(xa, ya, weight=wa, **kw)
            r = rows(r)
            return lgb.Dataset(xa[r], ya[r], weight=None if wa is None else wa[r], **kw)

        held_out = np.full((n, 3), np.nan)
        if plan[0] == "folds":  # k inner folds: the mean curve picks the rounds, then a refit on every row
            splits = [(rows(a), rows(b)) for a, b in plan[1]]
            result = lgb.cv(params, dataset(feature_name=names, free_raw_data=False),
                            num_boost_round=c.n_estimators, folds=splits, callbacks=[stop], return_cvbooster=True)
            cv = result["cvbooster"]
            for booster, (_, b) in zip(cv.boosters, plan[1]):
                held_out[b] = self._raw(booster, x[b], x_swapped[b] if c.swap_tta else None, cv.best_iteration)
            self.booster = lgb.train(params, dataset(feature_name=names), num_boost_round=max(1, cv.best_iteration))
        else:  # one held-out share (thousands of prompts): the early-stopped booster is kept, no refit
            fit_rows, stop_rows = plan[1], plan[2]
            dfit = dataset(fit_rows, feature_name=names, free_raw_data=True)
            dstop = dataset(stop_rows, reference=dfit)
            self.booster = lgb.train(params, dfit, num_boost_round=c.n_estimators, valid_sets=[dstop], callbacks=[stop])
            held_out[stop_rows] = self._raw(self.booster, x[stop_rows], x_swapped[stop_rows] if c.swap_tta else None)
        seen = ~np.isnan(held_out[:, 0]) & labelled  # pseudo-labels never fit the calibration
        self.calibration = fit_calibration(held_out[seen], y[seen], self.calibration.prior)

    def _inner_plan(self, train: pd.DataFrame):
        """Where early stopping and the calibration look, on the training part's prompts only (the
        fold's valid rows never choose anything), and on labelled rows only (a pseudo-labelled row
        trains the inner fits but is never held out): ("folds", [(fit, held-out)...]) for k
        prompt-grouped folds, ("holdout", fit, held-out) for one share of the prompts, None under 10
        labelled prompts.
        `auto`: folds while the training part has fewer than AUTO_HOLDOUT_PROMPTS prompts, one share
        beyond (where 20% of the prompts are thousands, and k fits would cost k times one)."""
        from sklearn.model_selection import GroupKFold, GroupShuffleSplit

        from ensemble.core.folds import labelled_splits, prompt_groups

        c, groups, labelled = self.config, prompt_groups(train), labelled_rows(train)
        n_groups = len(np.unique(groups[labelled]))
        if n_groups < 10:
            return None
        k = c.early_stopping_folds
        if k == "auto":
            k = 3 if n_groups < AUTO_HOLDOUT_PROMPTS else 0
        if k:
            splitter = GroupKFold(min(k, n_groups))
        else:
            splitter = GroupShuffleSplit(n_splits=1, test_size=c.early_stopping_frac,
                                         random_state=c.seed)
        splits = labelled_splits(groups, labelled,
                                 lambda g: splitter.split(np.zeros(len(g)), groups=g))
        return ("folds", splits) if k else ("holdout", *splits[0])

    def _raw(self, booster, x, x_swapped=None, rounds: int | None = None) -> np.ndarray:
        """Uncalibrated probabilities, averaged with the un-swapped prediction of the swapped battles."""
        rounds = rounds or booster.best_iteration or None
        proba = booster.predict(x, num_iteration=rounds)
        if x_swapped is not None:
            proba = 0.5 * (proba + unswap_proba(booster.predict(x_swapped, num_iteration=rounds)))
        return proba / proba.sum(axis=1, keepdims=True)

    def _predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        x, x_swapped = self._matrices(frame, self.config.swap_tta)
        return self.calibration.apply(self._raw(self.booster, x, x_swapped))

    def _save_state(self, path: Path) -> None:
        self.booster.save_model(str(path / "booster.txt"), num_iteration=self.booster.best_iteration or None)
        (path / VOCAB_FILE).write_text(json.dumps({"response": vocabulary_json(self.response_vec),
                                                   "prompt": vocabulary_json(self.prompt_vec)}), encoding="utf-8")
        (path / "importance.json").write_text(json.dumps(self.top_features(30), indent=1))
        (path / CALIBRATION_FILE).write_text(json.dumps(self.calibration.to_json()), encoding="utf-8")

    def _load_state(self, path: Path) -> None:
        self.booster = lgb.Booster(model_file=str(path / "booster.txt"))
        vocab = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
        vc = self.config.vectorizer
        self.response_vec = vectorizer(vc, vocab["response"])
        self.prompt_vec = vectorizer(vc, vocab["prompt"]) if vocab["prompt"] is not None else None
        self.calibration = Calibration.from_json(json.loads((path / CALIBRATION_FILE).read_text(encoding="utf-8")))

    def top_features(self, k: int = 30) -> list[tuple[str, float]]:
        gain = self.booster.feature_importance("gain")
        order = np.argsort(gain)[::-1][:k]
        names = self.booster.feature_name()
        return [(names[i], round(float(gain[i]), 2)) for i in order]

