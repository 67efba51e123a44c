"""Tables of encoded images: Parquet files and Hugging Face ``datasets`` folders written by ``save_to_disk``.

The Hub's convention: an ``image`` column holding each picture's encoded file (PNG, JPEG ...) as the ``datasets``
Image feature stores it, a struct ``{bytes, path}`` (a plain binary column is taken too; a null ``bytes`` with a
``path`` reads that file, relative to the table's folder), and for ``--class-cond`` an integer ``label`` column,
whose class names come from the ``datasets`` ClassLabel feature when the table records one (``dataset_info.json``
of a saved dataset, the ``huggingface`` schema metadata of a Parquet file), else "0" to "K-1".

Recognised sources: a ``.parquet`` file; a folder whose files include ``*.parquet`` (all of them, below it, in
sorted order) and no images; a folder with ``state.json`` (a saved ``Dataset``: its ``*.arrow`` files, memory
mapped) or ``dataset_dict.json`` (a saved ``DatasetDict``: its ``train`` split).  Only pyarrow is needed (the
``datasets`` extra installs it): a one-line error says so when it is missing.
"""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np

from .errors import DataError
from .pictures import IMAGE_EXTENSIONS, open_image

__all__ = ["IMAGE_COLUMN", "LABEL_COLUMN", "table_files", "EncodedImages", "table_labels"]

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


def _pyarrow(where):
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"{where}: reading Parquet files and saved datasets needs pyarrow; "
                        "pip install 'ddpm[datasets]'") from None
    return pa


def table_files(path) -> tuple[str, Path, list[Path]] | None:
    """(kind "parquet" or "arrow", the folder names are relative to, the data files) when ``path`` is a table
    source, else None (a plain image folder or an array file)."""
    path = Path(path)
    if path.is_file():
        return ("parquet", path.parent, [path]) if path.suffix.lower() == ".parquet" else None
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        if not (path / "train" / "state.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            raise DataError(f"{path}: a saved DatasetDict with the splits {', '.join(map(str, splits))} and no "
                            "'train'; pass the folder of the split to train on")
        path = path / "train"
    if (path / "state.json").is_file():
        try:
            state = json.loads((path / "state.json").read_text())
            files = [path / d["filename"] for d in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path / 'state.json'}: not a saved dataset's state ({type(e).__name__}: {e}); save "
                            "it again with Dataset.save_to_disk") from None
        return "arrow", path, files
    parquet = sorted(path.rglob("*.parquet"))
    if parquet and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file()):
        return "parquet", path, parquet
    return None


def _read(kind: str, files: list[Path], columns: list[str] | None, where):
    pa = _pyarrow(where)
    try:
        if kind == "parquet":
            tables = [pa.parquet.read_table(f, columns=columns) for f in files]
        else:
            tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
            tables = [t.select(columns) for t in tables] if columns else tables
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except (OSError, pa.ArrowException, KeyError) as e:
        raise DataError(f"{where}: cannot read this table ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "check the file, or write it again") from None


def _schema(kind: str, files: list[Path], where):
    pa = _pyarrow(where)
    try:
        if kind == "parquet":
            return pa.parquet.read_schema(files[0])
        return pa.ipc.open_stream(pa.memory_map(str(files[0]))).schema
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{files[0]}: cannot read this table ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "check the file, or write it again") from None


class EncodedImages:
    """The ``image`` column of a table: ``len``, :meth:`open` (image i as an open PIL image), :meth:`name`."""

    def __init__(self, path, kind: str, root: Path, files: list[Path]):
        self.where, self.root = Path(path), root
        names = _schema(kind, files, path).names
        if IMAGE_COLUMN not in names:
            raise DataError(f"{files[0]}: no {IMAGE_COLUMN!r} column (it has {', '.join(names) or 'none'}); store the "
                            f"encoded images in a column named {IMAGE_COLUMN!r}, as the datasets Image feature does")
        kind_of = _schema(kind, files, path).field(IMAGE_COLUMN).type
        self.struct = kind_of.num_fields > 0
        if self.struct and kind_of.get_field_index("bytes") < 0:
            raise DataError(f"{files[0]}: the {IMAGE_COLUMN!r} column is a struct without 'bytes'; store each "
                            "image as {bytes, path} (the datasets Image feature) or as plain binary")
        self.kind, self.files, self.chunks, self._lock = kind, files, None, threading.Lock()
        pa = _pyarrow(path)
        if kind == "parquet":  # the row count from the footers: a later start reads no image
            self.count = sum(pa.parquet.ParquetFile(f).metadata.num_rows for f in files)
        else:  # memory-mapped, so counting reads no image either
            self.count = _read(kind, files, None, path).num_rows

    def _column(self):
        with self._lock:
            if self.chunks is None:
                column = _read(self.kind, self.files, [IMAGE_COLUMN], self.where).column(IMAGE_COLUMN)
                self.starts = np.cumsum([0] + [len(c) for c in column.chunks])
                self.chunks = column.chunks
        return self.chunks

    def __len__(self) -> int:
        return int(self.count)

    def name(self, i: int) -> str:
        return f"{self.where} (row {i})"

    def open(self, i: int):
        chunks = self._column()
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        cell = chunks[k][i - int(self.starts[k])].as_py()
        data, path = (cell.get("bytes"), cell.get("path")) if self.struct else (cell, None)
        if data is None and path:
            return open_image(self.root / path, f"{self.name(i)}: {path}")
        if data is None:
            raise DataError(f"{self.name(i)}: an empty image cell; remove the row or fill it")
        return open_image(io.BytesIO(data), self.name(i))


def _class_names(kind: str, root: Path, files: list[Path]) -> tuple[str, ...] | None:
    try:
        if kind == "arrow":
            info = json.loads((root / "dataset_info.json").read_text())
        else:
            meta = _schema(kind, files, root).metadata or {}
            info = json.loads(meta.get(b"huggingface", b"{}")).get("info", {})
        names = info["features"][LABEL_COLUMN]["names"]
        return tuple(str(n) for n in names) if names else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def table_labels(path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """(the ``label`` column as an array, the ClassLabel names or None) of a table source."""
    kind, root, files = table_files(path)
    names = _schema(kind, files, path).names
    if LABEL_COLUMN not in names:
        raise DataError(f"{files[0]}: no {LABEL_COLUMN!r} column for --class-cond (it has {', '.join(names)}); add "
                        f"an integer column {LABEL_COLUMN!r}, or train without --class-cond")
    labels = _read(kind, files, [LABEL_COLUMN], path).column(LABEL_COLUMN)
    if labels.null_count:
        raise DataError(f"{path}: {labels.null_count} rows have no {LABEL_COLUMN!r}; label every image")
    return labels.to_numpy(), _class_names(kind, root, files)
