"""config.data.source='files': the user's text files, read whole into memory (any path tf.io.gfile reads).

Labelled text ("text", "label"): `.csv` (comma, standard quoting), `.tsv` (tab, no quoting, as GLUE's files),
`.jsonl`/`.json` (one JSON object a line, or one JSON array of objects); CSV and TSV need a header row.
Documents ("text",): `.txt` (one document a line) or `.jsonl`/`.json`. The text is in the column or JSON field
`config.data.text_field`, the label in `config.data.label_field`. Files decode with `config.data.encoding`
("utf-8" by default; a byte-order mark is dropped); a file that does not decode fails naming the file and line.

`config.data.<split>_files` are comma-separated paths or globs; a split without files is carved out of train by
the core. A row without a configured field, or a JSONL line that is not a JSON object, is a bad example
(`config.on_bad_example`); a header row without a configured column is a config error and always raises.
"""

import codecs
import csv
import io
import json
from collections.abc import Iterator

import ml_collections
import tensorflow as tf

from input_pipeline.registry import register_source
from input_pipeline.source import InMemory, Request, columns

FORMATS = {
    ("text", "label"): {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"},
    ("text",): {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl"},
}
FIELD_KEYS = {"text": "text_field", "label": "label_field"}  # example field -> the config key naming its column


def check(config: ml_collections.ConfigDict, fields: tuple[str, ...]) -> None:
    data = config.data
    if not data.train_files:
        raise ValueError(
            f"config.data.source='files' needs config.data.train_files (paths or globs of "
            f"{', '.join(FORMATS[fields])} files)."
        )
    try:
        codecs.lookup(data.encoding)
    except LookupError:
        raise ValueError(
            f"config.data.encoding={data.encoding!r} is not a text encoding Python knows; use e.g. 'utf-8' or "
            "'latin-1'."
        ) from None


@register_source("files", fields=FORMATS, check=check)
def load(request: Request) -> InMemory:
    data = request.config.data
    splits = {
        split: read_split(f"{split}_files", data[f"{split}_files"], request)
        for split in request.splits
        if split == "train" or data[f"{split}_files"]
    }
    return InMemory(description=f"config.data.train_files={data.train_files!r}", splits=splits)


def read_split(key: str, value: str, request: Request):
    """Every file of config.data.<key>, each record kept or reported as bad (request.keep)."""
    examples = []
    for path in expand_files(key, value, FORMATS[request.fields]):
        for where, record, problem in read_records(path, request.fields, request.config.data):
            example = request.keep(key, path, where, record, problem)
            if example is not None:
                examples.append(example)
    if not examples:
        skipped = request.bad.counts().get(key, 0)
        reason = f" ({skipped} bad example(s) were skipped)" if skipped else ""
        raise ValueError(f"config.data.{key}={value!r}: the files hold no examples{reason}.")
    return columns(examples, request.fields)


def expand_files(key: str, value: str, formats: dict[str, str]) -> list[str]:
    """Comma-separated paths or globs of config.data.<key> (or of config.<key> when `key` is dotted, as
    "serving.input_files") -> sorted existing files of a known format."""
    name = key if "." in key else f"data.{key}"
    paths = []
    for pattern in [p.strip() for p in value.split(",") if p.strip()]:
        matches = sorted(tf.io.gfile.glob(pattern))
        if not matches:
            raise FileNotFoundError(
                f"config.{name}={value!r}: {pattern!r} matches no file. Fix the path or glob "
                f"(comma-separated {', '.join(formats)} files)."
            )
        paths.extend(matches)
    for path in paths:
        if file_format(path, formats) is None:
            raise ValueError(f"config.{name}: {path!r} has an unknown extension; use one of {', '.join(formats)}.")
    return paths


def file_format(path: str, formats: dict[str, str]) -> str | None:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return formats.get(suffix)


def read_text(path: str, encoding: str) -> str:
    """The file decoded with config.data.encoding; a byte that does not decode names the file and line."""
    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return content.decode(codec)
    except UnicodeDecodeError as e:
        line = content[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: byte {content[e.start:e.start + 1]!r} does not decode as "
            f"config.data.encoding={encoding!r} ({e.reason}). Set config.data.encoding to the file's encoding "
            "(e.g. 'latin-1' for Western European text that is not UTF-8)."
        ) from None


def read_records(path: str, fields: tuple[str, ...], data: ml_collections.ConfigDict,
                 formats: dict[str, str] | None = None) -> Iterator[tuple[str, dict | None, str]]:
    """Yields (where, record, problem): `where` is "FILE line N" (1-based; "record N" in a JSON array),
    `record` maps each field to its raw value, `problem` is "" or what is wrong with the row. `formats`
    defaults to those of `fields` (FORMATS)."""
    names = {field: data[FIELD_KEYS[field]] for field in fields}
    content = read_text(path, data.encoding)
    fmt = file_format(path, formats or FORMATS[fields])
    if fmt == "txt":
        yield from ((f"{path} line {n}", {"text": line}, "") for n, line in enumerate(content.splitlines(), 1))
    elif fmt == "jsonl":
        yield from _json_records(path, content, names)
    else:
        yield from _delimited_records(path, content, fmt, names)


def _delimited_records(path: str, content: str, fmt: str, names: dict[str, str]):
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
    reader = csv.DictReader(io.StringIO(content, newline=""), **options)
    header = reader.fieldnames or []
    for field, column in names.items():
        if column not in header:
            key = FIELD_KEYS[field]
            raise ValueError(
                f"{path}: no column {column!r} (config.data.{key}); the header row has columns {header}. "
                f"Set config.data.{key} to one of them (a header row is required)."
            )
    for row in reader:
        missing = [column for column in names.values() if row[column] is None]
        problem = f"the row has fewer fields than the header: no {' and no '.join(map(repr, missing))}."
        problem = problem if missing else ""
        yield f"{path} line {reader.line_num}", {field: row[column] for field, column in names.items()}, problem


def _json_records(path: str, content: str, names: dict[str, str]):
    if content.lstrip().startswith("["):
        records = ((n, record, "") for n, record in enumerate(json.loads(content), start=1))
        unit = "record"
    else:
        records = ((n, *_parse_json_line(line)) for n, line in enumerate(content.splitlines(), 1) if line.strip())
        unit = "line"
    for n, record, problem in records:
        where = f"{path} {unit} {n}"
        if problem:
            yield where, None, problem
        elif not isinstance(record, dict):
            yield where, None, f"expected a JSON object, got {type(record).__name__}."
        else:
            yield where, {field: record.get(column) for field, column in names.items()}, _missing(record, names)


def _missing(record: dict, names: dict[str, str]) -> str:
    for field, column in names.items():
        if column not in record:
            key = FIELD_KEYS[field]
            return (
                f"no column {column!r} (config.data.{key}); columns present: {sorted(record)}. Set config.data.{key} "
                f"to one of them; a record with no field {column!r} is a bad example (config.on_bad_example)."
            )
    return ""


def _parse_json_line(line: str) -> tuple[object, str]:
    """(record, "") or (None, what is wrong)."""
    try:
        return json.loads(line), ""
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg}); JSONL needs one object a line."
