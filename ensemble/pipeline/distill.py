"""Teacher to student: the soft labels and pseudo-labels a student's folds train on, kept honest.

A student (any base model whose params section has `distill.teachers`) trains fold k on targets
q = (1 - w) * onehot(label) + w * teacher_T (ensemble.core.targets). Where teacher_T comes from:

- `nested` (default): for fold k, a training row of fold j != k gets the prediction of a teacher fitted
  on the folds other than j and k, so no label of fold k reaches fold k's student through its teacher.
  A registered teacher is fitted here K x (K - 1) / 2 times (one fit leaving out folds j and k
  labels fold j for outer fold k and fold k for outer fold j); a teacher from elsewhere brings these
  predictions in teachers/<name>/nested.parquet (columns id, outer_fold, winner_model_a,
  winner_model_b, winner_tie: for each outer fold k, one row per training id outside fold k).
- `leaky`: the teachers' plain OOF predictions (a registered teacher's K fold fits, or
  teachers/<name>/oof.parquet). The row of fold j came from a teacher that trained on fold k: the
  competitions' practice, and the student's OOF scores are optimistic (the bench labels them so).

Several teachers are blended per outer fold by the `weights` blender (weights + temperature), fitted on
that fold's training rows only. Pseudo-labels (data.unlabelled): for student fold k, the teachers'
fold-k models (trained without fold k) label the unlabelled battles, never the fold average (which saw
fold k); a battle whose prompt also appears in the labelled data belongs to that prompt's fold, so it
never trains the fold that validates its prompt. A teacher from elsewhere brings them in
teachers/<name>/unlabelled.parquet (id, fold, three probabilities: fold k's model on every unlabelled id).

Every teacher fit is cached under artifacts/models/<student>/teachers/ by its own identity (the
teacher's FoldIdentity for the folds it was fitted without, and the rows it predicts), and the student
fold's identity holds its teachers' part (teachers_digest), so a teacher change
retrains the student and nothing else does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core import fingerprint as fp
from ensemble.core import progress
from ensemble.core.config import ConfigError, from_dict
from ensemble.core.errors import DataError
from ensemble.core.folds import prompt_key
from ensemble.core.formats import listed
from ensemble.core.io import atomic_path, write_json, write_text
from ensemble.core.predictions import checked_predictions, read_predictions
from ensemble.core.targets import PSEUDO_COLUMN, SOFT_COLUMNS, DistillConfig, sharpen
from ensemble.models import create, is_registered, load
from ensemble.models.base import BaseModel
from ensemble.nn import distributed as dist

TEACHER_DIR = Path("teachers")  # teachers from elsewhere: teachers/<name>/{nested,oof,unlabelled}.parquet
FILES = {"nested": "nested.parquet", "leaky": "oof.parquet", "pseudo": "unlabelled.parquet"}
PSEUDO_REPORT = "pseudo_labels.json"
#: what turns a student's teachers into its targets: part of its teachers part (teachers_digest)
CODE = ("ensemble.pipeline.distill", "ensemble.blend", "ensemble.blend.base", "ensemble.blend.weights",
        "ensemble.core.degenerate", "ensemble.core.targets", "ensemble.nn.distributed")


def distill_config(section: dict | None, student: str) -> DistillConfig:
    return from_dict(DistillConfig, (section or {}).get("distill"), f"{student}.distill")


def check_teachers(student: str, params: dict, teacher_dir: Path = TEACHER_DIR,
                   unlabelled: bool = False) -> DistillConfig:
    """Refuse, before any training, a teacher that is not a registered model nor a folder of
    teacher_dir holding the file its mode needs, the student itself, or a teacher that distils too."""
    cfg = distill_config(params.get(student), student)
    for name in cfg.teachers:
        where = f"params {student}.distill.teachers"
        if name == student:
            raise ConfigError(f"{where}: {name!r} is the student itself")
        if is_registered(name):
            teacher = create(name, params.get(name, {}))  # its params checked too
            if getattr(teacher.config, "distill", DistillConfig()).on:
                raise ConfigError(f"{where}: {name!r} distils from {teacher.config.distill.teachers} itself; a "
                                  f"teacher must train on labels only (chains of students are not supported)")
            continue
        needed = [FILES[cfg.mode]] + ([FILES["pseudo"]] if unlabelled and cfg.pseudo else [])
        missing = [f for f in needed if not (teacher_dir / name / f).is_file()]
        if missing:
            raise ConfigError(f"{where}: {name!r} is not a registered model and {teacher_dir / name} has no "
                              f"{' / '.join(missing)}; teachers are models of this project or teachers from "
                              f"elsewhere (docs/distillation.md)")
    return cfg


def teacher_parts(name: str, params: dict, teacher_dir: Path, cache=None) -> dict[str, str]:
    """What a student learns through teacher `name`: a registered teacher's model parts and prediction
    settings, or the files of a teacher from elsewhere (teacher_dir/<name>/)."""
    if not is_registered(name):
        folder = Path(teacher_dir) / name
        return {f: fp.file_digest(folder / f) for f in FILES.values() if (folder / f).is_file()}
    teacher = create(name, params.get(name, {}), cache=cache)
    return {**fp.model_parts(teacher), "predict": fp.config_digest(teacher.prediction_settings())}


def teachers_digest(model, params: dict, train: pd.DataFrame, unlabelled: pd.DataFrame | None,
                    teacher_dir: Path, cache=None) -> str:
    """'none' for a model without teachers; for a student, everything its targets come from beyond its
    own config and training rows: each teacher's parts, the distillation code, in leaky mode every
    training row (a teacher's fold j fits on the student's fold k too), and the pseudo-labelled rows."""
    cfg = getattr(model.config, "distill", None)
    if cfg is None or not cfg.on:
        return "none"
    parts = {f"teacher {name}": fp.combine(teacher_parts(name, params, teacher_dir, cache)) for name in cfg.teachers}
    parts["code"] = fp.code_digest(CODE)
    if cfg.mode == "leaky":
        parts["rows"] = fp.frame_digest(train)
    if cfg.pseudo and unlabelled is not None and len(unlabelled):
        parts["unlabelled"] = fp.frame_digest(unlabelled)
    return fp.combine(parts)


class Teachers:
    """The teachers of one student: `fold_frame(k, rows)` is fold k's training frame with its targets."""

    def __init__(self, student: str, cfg: DistillConfig, params: dict, train: pd.DataFrame, fold_of: np.ndarray,
                 root: Path, cache=None, unlabelled: pd.DataFrame | None = None, teacher_dir: Path = TEACHER_DIR,
                 write: bool = True, saved: Path | None = None):
        self.student, self.cfg, self.params, self.train, self.fold_of = student, cfg, params, train, fold_of
        self.root, self.cache, self.teacher_dir, self.write = Path(root), cache, Path(teacher_dir), write
        self.saved = saved  # the models' saved folds (artifacts/models): a teacher's fold k reused
        self.n_folds = int(fold_of.max()) + 1
        self.unlabelled = unlabelled if unlabelled is not None and len(unlabelled) and cfg.pseudo else None
        self.labels, self._identities = train["label"].to_numpy(dtype=np.int64), {}
        # teachers from elsewhere first: their files are checked before any teacher is fitted here
        order = sorted(cfg.teachers, key=is_registered)
        found = {name: self._predictions(name) for name in order}
        per_teacher = [found[name] for name in cfg.teachers]
        self.soft, self.pseudo_soft = self._blend(per_teacher)  # [k] -> (n, 3) (NaN on fold k), (u, 3)
        self.pseudo_fold = self._pseudo_folds() if self.unlabelled is not None else None

    # -- the teachers' predictions, per outer fold ----------------------------------------------
    def _predictions(self, name: str) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """([k] -> (n, 3) soft labels of the rows outside fold k, NaN on fold k; [k] -> (u, 3) or None)."""
        if not is_registered(name):
            return self._from_elsewhere(name)
        n, k_all = len(self.train), range(self.n_folds)
        need_folds = self.cfg.mode == "leaky" or self.unlabelled is not None
        fold_fits = {k: self._fit(name, k, None) for k in k_all} if need_folds else {}
        pseudo = [fold_fits[k][1] for k in k_all] if self.unlabelled is not None else None
        if self.cfg.weight == 0 and len(self.cfg.teachers) == 1:  # labels kept, no soft label to fit: pseudo only
            # (several teachers still need their nested predictions: the blend weights are fitted on them)
            onehot = np.eye(3)[self.labels]
            return [np.where((self.fold_of == k)[:, None], np.nan, onehot) for k in k_all], pseudo
        # nested: one fit per pair k < j labels fold j for outer fold k and fold k for outer fold j
        pairs = {}
        if self.cfg.mode == "nested":
            pairs = {(k, j): self._fit(name, k, j)[0] for k in k_all for j in k_all if k < j}
        soft = []
        for k in k_all:
            out = np.full((n, 3), np.nan)
            for j in k_all:
                if j == k:
                    continue
                rows = self.fold_of == j
                if self.cfg.mode == "leaky":
                    out[rows] = fold_fits[j][0][j]
                else:
                    out[rows] = pairs[min(k, j), max(k, j)][j]
            soft.append(out)
        return soft, pseudo

    def _fit(self, name: str, k: int,
             j: int | None) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
        """Teacher `name` fitted on the folds other than k (and j, k < j): its predictions of fold
        k's rows (and fold j's), each fold predicted on its own, and, for a fold-k fit, of the
        unlabelled rows. ({fold: (rows of that fold, 3)}, (u, 3) or None); cached by fingerprint."""
        held = [k] if j is None else [k, j]
        used = ~np.isin(self.fold_of, held)
        teacher = create(name, self.params.get(name, {}), cache=self.cache)
        if name not in self._identities:  # once per teacher: the backbone digest reads its weights
            self._identities[name] = fp.Identities(teacher, self.train, self.fold_of)
        identities = self._identities[name]
        fit = identities.of(k) if j is None else identities.of(k, j)
        parts = {**fit.parts, "predict": fp.config_digest(teacher.prediction_settings()),  # e.g. swap_tta_share
                 "held": identities.rows_digest(np.isin(self.fold_of, held))}  # the rows it predicts
        predict_u = j is None and self.unlabelled is not None
        if predict_u:
            parts["unlabelled"] = fp.frame_digest(self.unlabelled)
        key = fp.combine(parts)
        path = self.root / name / (f"fold_{k}.npz" if j is None else f"nested_{k}_{j}.npz")
        meta = path.with_suffix(".key")
        kept = None
        if dist.is_main() and path.is_file() and meta.is_file() and meta.read_text() == key:
            with np.load(path, allow_pickle=False) as saved:
                kept = {f: saved[f"fold_{f}"] for f in held}, (saved["unlabelled"] if predict_u else None)
        kept = dist.from_main(kept)  # rank 0 decides for every process: all of them fit the teacher, or none
        if kept is not None:
            return kept
        reused = self._saved_fold(name, teacher, k) if j is None else None
        if reused is not None:
            progress.log(f"[{self.student}] teacher {name}: its saved fold {k} model")
            teacher = reused
        else:
            what = f"fold {k} model" if j is None else f"nested fit without folds {k} and {j}"
            progress.log(f"[{self.student}] teacher {name}: {what}, {int(used.sum())} training rows")
            train = self.train[used].reset_index(drop=True)
            teacher.fit(train)  # no valid rows: nothing it chooses may look at the rows it labels
        held_pred = {}
        for f in held:
            rows = self.train[self.fold_of == f].reset_index(drop=True)
            held_pred[f] = np.asarray(teacher.predict_proba(rows), dtype=np.float64)
        u_pred = np.asarray(teacher.predict_proba(self.unlabelled), dtype=np.float64) if predict_u else None
        if self.write:
            meta.unlink(missing_ok=True)  # the key goes last: a crash between the two writes leaves no valid pair
            arrays = {**{f"fold_{f}": p for f, p in held_pred.items()},
                      **({"unlabelled": u_pred} if predict_u else {})}
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
            write_text(meta, key)
        return held_pred, u_pred

    def _saved_fold(self, name: str, teacher: BaseModel, k: int) -> BaseModel | None:
        """The teacher's own fold-k model, saved by its OOF stage (models/<name>/fold_k), when it is
        the fit _fit would make: its done.json fingerprint is the one run_oof gives fold k of these
        rows and folds under today's config, code and weights, and its valid rows chose nothing
        (learns_from_valid). None otherwise, and under DDP (only rank 0 may read the artifacts there)."""
        if self.saved is None or teacher.learns_from_valid() or dist.is_distributed():
            return None
        folder = self.saved / name / f"fold_{k}"
        key = self._identities[name].of(k).key  # what the teacher's own OOF run gives its fold k
        if fp.read_done(folder).get("fingerprint") != key:
            return None
        return load(folder, cache=self.cache, runtime=self.params.get(name, {}))

    def _from_elsewhere(self, name: str) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """A teacher's files from teachers/<name>/, checked against the training ids and folds."""
        ids = pd.Index(self.train["id"].astype(str))
        folder = self.teacher_dir / name
        soft = []
        if self.cfg.mode == "leaky":
            oof = read_predictions(folder / FILES["leaky"], name)
            _require(oof.index.difference(ids), folder / FILES["leaky"], "rows for id(s) that are not training ids:")
            oof = oof.reindex(ids)
            _require(ids[oof[TARGETS[0]].isna()], folder / FILES["leaky"], "no row for training id(s)")
            full = oof[list(TARGETS)].to_numpy(dtype=np.float64)
            for k in range(self.n_folds):
                soft.append(np.where((self.fold_of == k)[:, None], np.nan, full))
        else:
            path = folder / FILES["nested"]
            nested = _read_keyed(path, name, "outer_fold")
            _require(pd.Index(sorted(set(nested) - set(range(self.n_folds)))), path,
                     f"outer_fold values beyond the {self.n_folds} folds of the project:")
            for k in range(self.n_folds):
                block = nested.get(k, pd.DataFrame(columns=TARGETS))
                _require(block.index.difference(ids), path, f"outer_fold {k}: id(s) that are not training ids:")
                part = block.reindex(ids)
                outside = self.fold_of != k
                seen = part[TARGETS[0]].notna().to_numpy()
                _require(ids[outside & ~seen], path, f"outer_fold {k}: no row for training id(s)")
                _require(ids[~outside & seen], path, f"outer_fold {k}: rows for fold {k}'s own valid id(s), which "
                                                     f"its teacher must not have been fitted on nor predict:")
                soft.append(np.where(outside[:, None], part[list(TARGETS)].to_numpy(dtype=np.float64), np.nan))
        pseudo = None
        if self.unlabelled is not None:
            path, u_ids = folder / FILES["pseudo"], pd.Index(self.unlabelled["id"].astype(str))
            per_fold = _read_keyed(path, name, "fold")
            pseudo = []
            for k in range(self.n_folds):
                block = per_fold.get(k, pd.DataFrame(columns=TARGETS))
                _require(block.index.difference(u_ids), path, f"fold {k}: id(s) that are not unlabelled ids:")
                part = block.reindex(u_ids)
                _require(u_ids[part[TARGETS[0]].isna().to_numpy()], path, f"fold {k}: no row for unlabelled id(s)")
                pseudo.append(part[list(TARGETS)].to_numpy(dtype=np.float64))
        return soft, pseudo

    def _blend(self, per_teacher):
        """One soft-label matrix per outer fold (and its pseudo-labels): the one teacher's, or the
        `weights` blend of several fitted on that fold's training rows; then the temperature."""
        from ensemble.blend.weights import WeightsBlender

        soft, pseudo = [], []
        for k in range(self.n_folds):
            rows = self.fold_of != k
            probas = [t[0][k] for t in per_teacher]
            u = [t[1][k] for t in per_teacher] if self.unlabelled is not None else None
            out = np.full((len(self.train), 3), np.nan)
            if len(probas) == 1:
                out[rows], u_k = probas[0][rows], (u[0] if u else None)
            else:
                blender = WeightsBlender(self.cfg.teachers, {"temperature": True})
                blender.fit([p[rows] for p in probas], self.labels[rows], None)
                out[rows], u_k = blender.predict([p[rows] for p in probas]), (blender.predict(u) if u else None)
            soft.append(out)
            pseudo.append(u_k)
        return soft, pseudo

    # -- pseudo-labels: which folds each unlabelled battle may train --------------------------------
    def _pseudo_folds(self) -> np.ndarray:
        """The fold of each unlabelled battle: its prompt's fold when the labelled data holds that prompt
        (it never trains the fold that validates the prompt), else -1 (it trains every fold)."""
        fold_of_prompt = dict(zip(self.train["prompt"].map(prompt_key), self.fold_of))
        folds = self.unlabelled["prompt"].map(prompt_key).map(fold_of_prompt)
        return folds.fillna(-1).to_numpy(dtype=np.int64)

    def pseudo_report(self) -> dict:
        if self.unlabelled is None:
            return {}
        kept = [self._pseudo_kept(k) for k in range(self.n_folds)]
        report = {"unlabelled_rows": int(len(self.unlabelled)),
                  "grouped_with_labelled_prompts": int((self.pseudo_fold >= 0).sum()),
                  "margin": self.cfg.pseudo_margin,
                  "per_fold": [{"fold": k, "joined": int(m.sum()),
                                "withheld_same_prompt": int((self.pseudo_fold == k).sum()),
                                "dropped_by_margin": int(((self.pseudo_fold != k) & ~m).sum())}
                               for k, m in enumerate(kept)]}
        return report

    def _pseudo_kept(self, k: int) -> np.ndarray:
        p = self.pseudo_soft[k]
        return (self.pseudo_fold != k) & (np.abs(p[:, 0] - p[:, 1]) >= self.cfg.pseudo_margin)

    # -- the student's fold frames ---------------------------------------------------------------------
    def fold_frame(self, k: int, rows: np.ndarray) -> pd.DataFrame:
        """Fold k's training frame: its labelled rows with q = (1 - w) * onehot + w * teacher_T, then the
        pseudo-labelled battles that may train fold k, with q = teacher_T and label = its argmax."""
        w, t = self.cfg.weight, self.cfg.temperature
        part = self.train.iloc[rows].reset_index(drop=True)
        teacher = self.soft[k][rows]
        if np.isnan(teacher).any():  # a bug, not input: fold k's own rows have no soft label by construction
            raise RuntimeError(f"{self.student}: fold {k}'s training rows hold rows without a teacher label")
        q = (1 - w) * np.eye(3)[self.labels[rows]] + w * sharpen(teacher, t)
        part[list(SOFT_COLUMNS)] = q
        part[PSEUDO_COLUMN] = False
        if self.unlabelled is None:
            return part
        keep = self._pseudo_kept(k)
        extra = self.unlabelled[keep].reset_index(drop=True)
        pq = sharpen(self.pseudo_soft[k][keep], t)
        extra["label"] = pq.argmax(axis=1)
        extra[list(SOFT_COLUMNS)] = pq
        extra[PSEUDO_COLUMN] = True
        return pd.concat([part, extra], ignore_index=True)

    def save_report(self) -> None:
        report = self.pseudo_report()
        if report and self.write:
            write_json(self.root / PSEUDO_REPORT, report)
            joined = ", ".join(str(f["joined"]) for f in report["per_fold"])
            progress.log(f"[{self.student}] pseudo-labels: {report['unlabelled_rows']} unlabelled battles, "
                         f"{report['grouped_with_labelled_prompts']} share a prompt with labelled ones (kept out of "
                         f"that prompt's fold); joined per fold: {joined}")


def _read_keyed(path: Path, name: str, key: str) -> dict[int, pd.DataFrame]:
    """A teacher file with one block of rows per fold (`key`): {fold: frame indexed by id}."""
    if not path.is_file():
        raise DataError(f"{path}: not found (teacher {name!r}; docs/distillation.md)")
    frame = pd.read_parquet(path)
    missing = [c for c in ("id", key, *TARGETS) if c not in frame]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected id, {key}, {', '.join(TARGETS)}")
    return {int(k): checked_predictions(block.drop(columns=key), f"{path} ({key} {k})")
            for k, block in frame.groupby(key)}


def _require(bad: pd.Index, path: Path, what: str) -> None:
    if len(bad):
        raise DataError(f"{path}: {what} {listed(bad, 5)} ({len(bad)} in all)")
