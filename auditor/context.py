"""AuditContext: the inputs of one audit run, each computed once and shared by every auditor.

Scope: the rows of the audited splits (default: all). Labels, embeddings, the kNN graph and
out-of-sample predicted probabilities are loaded or computed lazily, the first time an auditor
asks, and the expensive ones (kNN graph, pred_probs) are cached in the store, keyed by what they
were computed from, so a second run reuses them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from ..store import Store
from ..store import schema as S
from ..store.errors import InputError
from ..store.knn import KnnGraph, cached_knn
from .base import Requires


class AuditContext:
    def __init__(
        self,
        store: Store,
        splits: list[str] | None = None,
        reference: str | None = None,
        embedding: str | None = None,
        k: int = 10,
        seed: int = 0,
        cv_folds: int = 5,
        pred_probs: str | np.ndarray | None = None,
        options: dict | None = None,
    ):
        store.require_samples()
        # Options for particular auditors that are not auditor parameters (e.g. a benchmark
        # file, a judge endpoint): plain data, never secrets (keys are read from the env).
        self.options = dict(options or {})
        self.store = store
        all_splits = store.splits()
        unknown = sorted(set(splits or []) - set(all_splits))
        if unknown:
            raise InputError(
                f"unknown split(s) {', '.join(unknown)}", f"the store has: {', '.join(all_splits)}"
            )
        self.splits = list(splits) if splits else all_splits
        if reference is not None and reference not in all_splits:
            raise InputError(
                f"reference split {reference!r} is not in the store",
                f"choose one of: {', '.join(all_splits)}",
            )
        self.reference = reference or ("train" if "train" in all_splits else all_splits[0])
        # True when the user named the reference (contamination treats it as the benchmark).
        self.reference_given = reference is not None
        self.embedding_key = embedding or store.default_embedding()
        if embedding and embedding not in [e["key"] for e in store.embedding_keys()]:
            raise InputError(
                f"no embedding named {embedding!r}",
                "list them with `datacure info`, or compute one with `datacure embed`",
            )
        self.k = k
        self.seed = seed
        self.cv_folds = cv_folds
        self.pred_probs_source = pred_probs
        # the role and type of every column, as ingest wrote them (store/datadef.py)
        self.definition = store.data_definition()
        self.text_column = self.definition.text_column
        self.image_column = self.definition.image_column

    # --- rows ---------------------------------------------------------------------------------
    @functools.cached_property
    def frame(self) -> pl.DataFrame:
        """The audited rows of `samples`, all columns, ordered by row_id."""
        return self.split_frame(*self.splits)

    def split_frame(self, *splits: str) -> pl.DataFrame:
        placeholders = ", ".join("?" for _ in splits)
        return self.store.polars(
            f"SELECT * EXCLUDE ({S.CONTENT_HASH}) FROM {S.SAMPLES} "
            f"WHERE split IN ({placeholders}) ORDER BY row_id",
            list(splits),
        )

    @property
    def n(self) -> int:
        return len(self.frame)

    @functools.cached_property
    def row_ids(self) -> np.ndarray:
        return self.frame[S.ROW_ID].to_numpy().astype(np.int64)

    @functools.cached_property
    def split_of(self) -> np.ndarray:
        return self.frame[S.SPLIT].to_numpy()

    # --- labels -------------------------------------------------------------------------------
    @functools.cached_property
    def classes(self) -> list:
        """Sorted distinct labels among the audited rows (original values)."""
        if S.LABEL not in self.frame.columns:
            return []
        return sorted(
            self.frame[S.LABEL].drop_nulls().unique().to_list(), key=lambda v: (str(type(v)), v)
        )

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Label codes: index into `classes`, -1 where the row has no label."""
        if not self.classes:
            return np.full(self.n, -1, dtype=np.int64)
        mapping = pl.DataFrame({"_v": self.classes, "_code": np.arange(len(self.classes))})
        codes = (
            self.frame.select(pl.col(S.LABEL).alias("_v"))
            .join(mapping, on="_v", how="left", maintain_order="left")["_code"]
            .fill_null(-1)
        )
        return codes.to_numpy().astype(np.int64)

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0

    # --- content ------------------------------------------------------------------------------
    @functools.cached_property
    def texts(self) -> np.ndarray | None:
        if not self.text_column:
            return None
        return self.frame[self.text_column].cast(pl.Utf8).fill_null("").to_numpy()

    @functools.cached_property
    def image_paths(self) -> np.ndarray | None:
        if not self.image_column or S.IMAGE_PATH not in self.frame.columns:
            return None
        return self.frame[S.IMAGE_PATH].to_numpy()

    @functools.cached_property
    def export_columns(self) -> list[str]:
        """Columns a datacure export added, when the samples are a re-ingested export."""
        return self.definition.export_columns

    @functools.cached_property
    def copy_groups(self) -> np.ndarray | None:
        """Per audited row, an id shared by the recorded copies of one original row (the
        `datacure_row_id` of a re-ingested export: an oversampled row repeated on purpose);
        None when the samples record no copies. Rows without a recorded original get ids of
        their own."""
        if S.COPY_OF not in self.export_columns:
            return None
        orig = self.frame[S.COPY_OF].cast(pl.Int64, strict=False).to_numpy()
        orig = np.asarray(orig, dtype=np.float64)
        if not np.isfinite(orig).any():
            return None
        _, codes = np.unique(np.nan_to_num(orig, nan=-1.0), return_inverse=True)
        own = np.flatnonzero(~np.isfinite(orig))
        codes = codes.astype(np.int64)
        codes[own] = codes.max() + 1 + np.arange(len(own))
        return codes

    @functools.cached_property
    def metadata_columns(self) -> list[str]:
        """The source columns that describe a row, in `frame` order: the definition's features
        (role `metadata` of a testable type; not the text, image, label, split, vector or id,
        nor the columns a datacure export added)."""
        features = set(self.definition.features)
        return [c for c in self.frame.columns if c in features]

    def column_type(self, name: str) -> str | None:
        """The data definition's type of column `name` (numeric, categorical, text, identifier,
        ...; None for a column the definition does not know). Auditors read it instead of
        classifying a column themselves."""
        c = self.definition.column(name)
        return None if c is None else c.type

    # --- embeddings and kNN ---------------------------------------------------------------------
    @functools.cached_property
    def embeddings(self) -> np.ndarray:
        """Vectors of the audited rows, aligned with `row_ids` (float32 [n, d])."""
        if self.embedding_key is None:
            raise InputError(
                "the store has no embeddings", f"run `datacure embed --db {self.store.path}`"
            )
        rid, vec = self.store.load_embeddings(self.embedding_key, self.row_ids)
        if len(rid) != self.n:
            raise InputError(
                f"{self.n - len(rid)} audited rows have no vector in embedding "
                f"{self.embedding_key!r}",
                f"run `datacure embed --db {self.store.path}` to finish embedding",
            )
        return vec

    def vectors_for(self, row_ids: np.ndarray) -> np.ndarray:
        """Vectors for any rows of the store (e.g. another split), aligned with sorted row_ids."""
        rid, vec = self.store.load_embeddings(self.embedding_key, np.sort(row_ids))
        if len(rid) != len(row_ids):
            raise InputError(
                f"{len(row_ids) - len(rid)} rows have no vector in {self.embedding_key!r}",
                f"run `datacure embed --db {self.store.path}`",
            )
        return vec

    _knn: KnnGraph | None = None

    def knn(self, k: int | None = None) -> KnnGraph:
        """The kNN graph over the audited rows (positions into `row_ids`), computed once."""
        k = min(k or self.k, self.n - 1)
        if self._knn is None or self._knn.k < k:
            # options["knn"]: knn_search options (index kind, target_recall), e.g. from a bench
            self._knn = cached_knn(
                self.store,
                self.embedding_key,
                self.row_ids,
                self.embeddings,
                max(k, self.k),
                **self.options.get("knn", {}),
            )
        return self._knn.truncate(k)

    # --- out-of-sample predicted probabilities --------------------------------------------------
    def pred_probs_fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(json.dumps([self.embedding_key, self.cv_folds, self.seed, PRED_MODEL]).encode())
        h.update(self.row_ids.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]

    @functools.cached_property
    def pred_probs(self) -> np.ndarray:
        """Out-of-sample P(class | row) [n, len(classes)], rows aligned with `row_ids`.

        From the user's column or .npy file when given; else cross-validated (K-fold) on the
        embeddings and cached in `predictions` under a fingerprint of its inputs."""
        if self.pred_probs_source is not None:
            return self._user_pred_probs(self.pred_probs_source)
        fp = self.pred_probs_fingerprint()
        cached = self.store.arrow(
            f"SELECT row_id, pred_probs FROM {S.PREDICTIONS} WHERE fingerprint = ? ORDER BY row_id",
            [fp],
        )
        if cached.num_rows == self.n:
            flat = cached.column("pred_probs").combine_chunks().flatten().to_numpy()
            return flat.reshape(self.n, -1).astype(np.float64)
        from .predict import cross_val_pred_probs

        probs = cross_val_pred_probs(
            self.embeddings, self.labels, len(self.classes), folds=self.cv_folds, seed=self.seed
        )
        if not self.store.read_only:
            import pyarrow as pa

            tbl = pa.table(
                {
                    S.ROW_ID: pa.array(self.row_ids),
                    "pred_probs": pa.array(list(probs.astype(np.float32))),
                }
            )
            with self.store.transaction():
                self.store.execute(f"DELETE FROM {S.PREDICTIONS} WHERE fingerprint = ?", [fp])
                with self.store.registered("_dc_pp", tbl):
                    self.store.execute(
                        f"INSERT INTO {S.PREDICTIONS} "
                        "SELECT row_id, ?, ?, ?, pred_probs::FLOAT[], now() "
                        "FROM _dc_pp",
                        [fp, PRED_MODEL, json.dumps([str(c) for c in self.classes])],
                    )
        return probs

    @property
    def pred_probs_label(self) -> str:
        """Where pred_probs come from, for `info`: the user's file or column, "user array", or
        "cross-validated"."""
        src = self.pred_probs_source
        if src is None:
            return "cross-validated"
        return src if isinstance(src, str) else "user array"

    def _user_pred_probs(self, source: str | np.ndarray) -> np.ndarray:
        k = len(self.classes)
        if not isinstance(source, str):
            try:
                arr = np.asarray(source, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"pred_probs is not a numeric array: {exc}",
                    "pass an [n_rows, n_classes] float array",
                ) from None
        elif source.endswith(".npy"):
            path = Path(source)
            if not path.exists():
                raise InputError(f"pred_probs file {path} does not exist", "check the path")
            try:  # never unpickle: an object array or a pickle renamed .npy is refused
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(
                    f"cannot read pred_probs file {path} as a numeric .npy array: {exc}",
                    "save a float array with `np.save(path, probs)` (object arrays and pickles "
                    "are refused)",
                ) from None
        elif source in self.frame.columns:
            arr = np.asarray(self.frame[source].to_list(), dtype=np.float64)
        else:
            raise InputError(
                f"pred_probs source {source!r} is neither a .npy file nor a column of samples",
                "give a path to an [n_rows, n_classes] .npy file or the name of a list column",
            )
        if arr.ndim != 2 or arr.shape != (self.n, k):
            raise InputError(
                f"pred_probs has shape {arr.shape}, expected ({self.n}, {k}) "
                "(audited rows in row_id order, classes in sorted order)",
                "produce out-of-sample probabilities for every audited row and class",
            )
        if (arr < 0).any() or not np.allclose(arr.sum(1), 1.0, atol=1e-3):
            raise InputError("pred_probs rows must be probabilities summing to 1", "normalise them")
        return arr

    # --- availability ---------------------------------------------------------------------------
    def missing(self, requires: frozenset[Requires]) -> str | None:
        """Why the given requirements cannot be met here (None when they can)."""
        for req in sorted(requires, key=lambda r: r.value):
            reason = self._missing_one(req)
            if reason:
                return reason
        return None

    def _missing_one(self, req: Requires) -> str | None:
        # cached on the instance: a functools.cache on the method would be a module-level table
        # keyed by `self` that keeps every context (and its embeddings) alive
        cache = self.__dict__.setdefault("_missing_cache", {})
        if req not in cache:
            cache[req] = self._why_missing(req)
        return cache[req]

    def _why_missing(self, req: Requires) -> str | None:
        if req in (Requires.LABELS, Requires.PRED_PROBS) and len(self.classes) < 2:
            return "needs labels with at least two classes among the audited rows"
        # the user's own pred_probs stand in for the embeddings of PRED_PROBS, not of EMBEDDINGS
        if req is Requires.EMBEDDINGS or (
            req is Requires.PRED_PROBS and self.pred_probs_source is None
        ):
            if self.embedding_key is None:
                return "needs embeddings: run `datacure embed` first"
            try:
                self.embeddings  # noqa: B018
            except InputError as exc:
                return f"needs embeddings: {exc.problem}"
        if req is Requires.SPLITS and len(self.store.splits()) < 2:
            return "needs at least two splits"
        if req is Requires.REFERENCE and (
            len(self.store.splits()) < 2 or self.reference not in self.store.splits()
        ):
            return f"needs a reference split ({self.reference!r}) and another split to compare"
        if req is Requires.TEXT and not self.text_column:
            return "needs a text column"
        if req is Requires.IMAGES and not self.image_column:
            return "needs an image column"
        if req is Requires.METADATA and not self.metadata_columns:
            return "needs metadata columns besides text, image and label"
        return None


# the pred_probs model (auditor/predict.py) names the cache key and the `predictions.model` value
from .predict import PRED_MODEL  # noqa: E402
