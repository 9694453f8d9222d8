"""Where a checkpoint or saved model lives: a Zarr group at a local path or fsspec URL.

A new storage backend is a new kind of URL: fsspec provides the file
system and Zarr the store; :class:`Location` is the only place that
reads, writes, lists or deletes objects, and the only one that knows
how to make a write durable (atomic rename and fsync locally, one PUT on
object stores).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from ..errors import CheckpointError
from .format import ATTR_KEY



class Location:
    """A Zarr group at a local path or fsspec URL, with small JSON objects beside it.

    Parameters
    ----------
    path : str or os.PathLike
        Local path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL.
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    """

    def __init__(self, path: Any, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = os.fspath(path) if hasattr(path, "__fspath__") else str(path)
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise CheckpointError(f"cannot open {self.url!r}: {exc}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self._store: Any = None

    def key(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    @property
    def store(self) -> Any:
        """The Zarr store of this location (made once)."""
        if self._store is None:
            import zarr

            if self.local:
                self._store = zarr.storage.LocalStore(self.root)
            else:
                self._store = zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options or None)
        return self._store

    def read_json(self, name: str) -> Any:
        """A small JSON object, or None when it does not exist."""
        try:
            data = self.fs.cat_file(self.key(name))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CheckpointError(f"{self.url}/{name} is not valid JSON ({exc})") from None

    def write_json(self, name: str, value: Any) -> None:
        """Replace a small JSON object in one step.

        Locally: write a temporary file and rename it over the old one;
        on object stores a single PUT is already all-or-nothing.
        """
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        target = self.key(name)
        if self.local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(os.path.dirname(target))
        else:
            self.fs.pipe_file(target, data)

    def sync(self, path: str) -> None:
        """Flush every file and directory under ``path`` to disk (local paths only).

        Object stores make a PUT durable before it returns; a local file
        system may keep written data in memory, so a snapshot's arrays are
        synced before the pointer names them.
        """
        if not self.local:
            return
        top = self.key(path)
        for directory, _, files in os.walk(top):
            for name in files:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(directory)
        _fsync_dir(os.path.dirname(top))

    def group_attrs(self, path: str = "") -> dict[str, Any] | None:
        """The ``dask_em`` attributes of the Zarr group at ``path``, or None."""
        meta = self.read_json(f"{path}/zarr.json" if path else "zarr.json")
        if not isinstance(meta, dict):
            return None
        attrs = meta.get("attributes") or {}
        value = attrs.get(ATTR_KEY)
        return value if isinstance(value, dict) else None

    def exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.root)) and bool(self.listdir(""))
        except (FileNotFoundError, NotADirectoryError):
            return False

    def listdir(self, path: str) -> list[str]:
        """Names directly under ``path`` (empty if it does not exist)."""
        try:
            self.fs.invalidate_cache(self.key(path))
            entries = self.fs.ls(self.key(path), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove(self, path: str) -> None:
        """Delete everything under ``path`` (ignore if already gone).

        Callers pass fixed names or names checked by :func:`~dask_em.storage.snapshots.snapshot_path`.
        """
        try:
            self.fs.rm(self.key(path), recursive=True)
        except FileNotFoundError:
            pass


def _fsync_dir(path: str) -> None:
    """Make a rename or a new file in directory ``path`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

