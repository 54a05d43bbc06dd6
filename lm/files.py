"""File I/O on any file system `etils.epath` knows: local paths, `gs://`, `s3://` (through tf.io.gfile).

Every file lm reads or writes outside Orbax goes through here (Orbax already uses epath), so a workdir, an
`init_from` directory or an export directory in a bucket works like a local one. Readers that need a real
file (safetensors, zip archives, HDF5) get the local path, or a temporary local copy of a remote file.
"""

import contextlib
import errno
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from etils import epath


def path(location: str | os.PathLike) -> epath.Path:
    return epath.Path(location)


def join(location: str | os.PathLike, *parts: str) -> str:
    return str(epath.Path(location).joinpath(*parts))


def absolute_path(location: str) -> str:
    """A local path made absolute, "." and ".." resolved (symbolic links are kept); a URL (gs://...) as it is."""
    return location if "://" in location else os.path.abspath(location)


def exists(location: str | os.PathLike) -> bool:
    return bool(location) and epath.Path(location).exists()


def is_file(location: str | os.PathLike) -> bool:
    return bool(location) and epath.Path(location).is_file()


def is_dir(location: str | os.PathLike) -> bool:
    return bool(location) and epath.Path(location).is_dir()


def makedirs(location: str | os.PathLike) -> None:
    epath.Path(location).mkdir(parents=True, exist_ok=True)


def check_writable(location: str, name: str, fix: str, *, directory: bool = False, writes_beside: bool = False) -> None:
    """Raises OSError "NAME cannot be written: REASON. FIX" unless lm can write `location`; a mode calls it at its
    start, so that a bad output path fails in a moment, not after the model was restored, compiled and run.

    A file (`directory` False): not a directory, its directory there (created if missing, as the writers do) and
    taking new files; a local file that exists already only needs to be writable itself (e.g. /dev/stdout), unless
    `writes_beside` (the writer also creates files beside it: feedback writes a .tmp and renames it). A directory
    (`directory` True): not a file, there (created if missing) and taking new files; what it holds is kept. `name`
    names the setting for the user, e.g. "config.serving.output='out.jsonl'". A probe file with a unique name is
    written in the directory and removed: nothing of the user's is overwritten and nothing is left behind but the
    directories created (storage that lets lm create files but not delete them keeps the probe, with a warning).
    Goes through tf.io.gfile, so `gs://` and the other file systems TensorFlow knows are checked as local paths are.
    """
    import tensorflow as tf

    location = os.fspath(location)
    folder = location if directory else os.path.dirname(location)
    try:
        if directory and tf.io.gfile.exists(location) and not tf.io.gfile.isdir(location):
            raise OSError("it is a file, not a directory")
        if not directory and tf.io.gfile.isdir(location):
            raise OSError("it is a directory")
        if not directory and location.endswith("/"):
            raise OSError("it names a directory (it ends with '/')")
        if not (directory or writes_beside or "://" in location) and os.path.exists(location):
            if not os.access(location, os.W_OK):
                raise PermissionError(errno.EACCES, "the file exists and is not writable")
            return
        if folder:
            tf.io.gfile.makedirs(folder)
        probe = os.path.join(folder, f".lm_write_check_{uuid.uuid4().hex}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
    except (OSError, tf.errors.OpError) as e:
        reason = e.message if isinstance(e, tf.errors.OpError) else (e.strerror or str(e))
        raise OSError(f"{name} cannot be written: {reason}. {fix}") from None
    try:
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        logging.getLogger(__name__).warning("Could not remove the write check's probe file %s (%s); delete it.",
                                            probe, e)


def setting(key: str, value: str, location: str) -> str:
    """How an error names the setting `key` that resolved to `location`: "KEY='VALUE'", or, for an empty value
    that stands for a default location, "KEY='' (the default, 'LOCATION')"."""
    return f"{key}={value!r}" if value else f"{key}='' (the default, {location!r})"


def read_text(location: str | os.PathLike) -> str:
    return epath.Path(location).read_text()


def write_text(location: str | os.PathLike, text: str) -> None:
    epath.Path(location).write_text(text)


def read_json(location: str | os.PathLike) -> Any:
    return json.loads(read_text(location))


def write_json(location: str | os.PathLike, value: Any) -> None:
    write_text(location, json.dumps(value, indent=2))


# What predict, export and serve read of a run's data (class names, image preprocessing), written by training.
SERVING_FACTS = "serving_facts.json"


def read_run_config(workdir: str | os.PathLike, given_as: str = "--workdir", missing_ok: bool = False) -> dict | None:
    """The resolved config that the run in `workdir` wrote at its start (WORKDIR/config.json), as a dict.

    `given_as` names where the user gave the workdir ("--workdir", "config.init_from"), for the error. Without a
    config.json: None if `missing_ok` (a workdir no run has used yet), else an error. A config.json that lm did
    not write (a Hugging Face directory) is an error either way."""
    file = join(workdir, "config.json")
    if not is_file(file):
        if missing_ok:
            return None
        raise FileNotFoundError(f"{given_as}={str(workdir)!r} has no config.json: it is not the workdir of a run of "
                                "ours (main.py --mode=train --workdir=...).")
    config = read_json(file)
    if not (isinstance(config, dict) and "task" in config):  # Every config of ours has a task; HF ones have none.
        raise ValueError(f"{given_as}={str(workdir)!r} holds a config.json that lm did not write (a Hugging Face "
                         "model directory?): it is not the workdir of a run of ours. A Hugging Face directory is "
                         "given as --config.init_from.")
    return config


def read_bytes(location: str | os.PathLike) -> bytes:
    return epath.Path(location).read_bytes()


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    epath.Path(location).write_bytes(data)


def copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    epath.Path(source).copy(epath.Path(target), overwrite=True)


def is_local(location: str | os.PathLike) -> bool:
    return "://" not in os.fspath(location)


@contextlib.contextmanager
def local_file(location: str | os.PathLike) -> Iterator[str]:
    """A local path to the file: itself when local, else a temporary copy (for safetensors, zip, HDF5 readers)."""
    if is_local(location):
        yield os.fspath(location)
        return
    with tempfile.TemporaryDirectory() as directory:
        local = os.path.join(directory, epath.Path(location).name)
        epath.Path(location).copy(epath.Path(local))
        yield local
