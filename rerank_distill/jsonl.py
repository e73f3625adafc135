"""Reading and writing JSON-lines files: gzip-aware, errors that name file and line, and writes
that never leave a truncated file under the final name. Also the guards every stage puts around
its files before long work: an input is a readable file, an output can be written and is no
input, and one run at a time writes an output (only_writer)."""

from __future__ import annotations

import decimal
import errno
import glob
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rerank_distill.errors import InputError

logger = logging.getLogger(__name__)


# What surrogateescape decodes a byte that is not UTF-8 to
UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


class RepeatedKey(ValueError):
    """A JSON object names one key twice (json keeps the last value and drops the others silently)."""


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return record


JSON_LINE = json.JSONDecoder(object_pairs_hook=_object_without_repeated_keys)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages about any input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_input_file(path: str) -> None:
    """InputError where ``path`` is not a file that can be read as input: missing, a folder, or a
    pipe or device (the stages read their inputs more than once: first checked whole, then used)."""
    if path.endswith(".partial") and os.path.isfile(path.removesuffix(".partial") + ".progress.json"):
        # (stage 1 writes OUT.partial and OUT.progress.json while it scores, and renames the first to OUT at the end)
        raise InputError(f"is stage 1's unfinished output (generate_logits.py writes it while it scores; its run "
                         "stopped, or is still running): run generate_logits.py again with the same flags to finish "
                         f"{path.removesuffix('.partial')}, then pass that", path)
    if os.path.isfile(path):
        return
    if not os.path.exists(path) and os.path.isfile(path + ".partial"):
        raise InputError(f"not found: stage 1 has not finished it ({path}.partial holds the pairs scored so far); run "
                         "generate_logits.py again with the same flags to finish it", path)
    if os.path.isdir(path):
        raise InputError("is a folder; give a data file (or, for a data-set folder, FOLDER:SPLIT)", path)
    if os.path.exists(path):
        raise InputError("is not a regular file (a pipe or a device?): every stage reads its input more than once "
                         "(checked whole before the work starts), so save it to a file and pass that", path)
    raise InputError("file not found; check the path", path)


# Compressions other than gzip, by their files' first bytes: read as text, they would be reported as bytes that are not UTF-8
OTHER_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip",
                      b"\x04\x22\x4d\x18": "lz4"}


def _check_name_fits_content(path: str) -> None:
    """InputError where the file's first bytes contradict its name, which picks how it is read: gzip
    under a plain name would be reported as bytes that are not UTF-8, plain text under a ``.gz``
    name as a truncated archive, and Parquet as either; so would a compression no stage reads
    (bzip2, xz, zstd, zip, lz4), whatever its name."""
    with open(path, "rb") as file:
        head = file.read(6)
    # (suffixes are matched as written: TRAIN.JSONL.GZ ends in .GZ, not .gz)
    cased = " (in lower case)" if path.lower().endswith((".gz", ".parquet")) else ""
    if head.startswith(b"PAR1"):
        raise InputError(f"is a Parquet file but its name does not end in .parquet{cased}; rename it so", path)
    compression = next((name for magic, name in OTHER_COMPRESSIONS.items() if head.startswith(magic)), None)
    if compression:
        raise InputError(f"is {compression}-compressed, which no stage reads (JSON lines are read plain or gzipped, "
                         ".jsonl.gz); decompress it, or recompress it with gzip", path)
    gzipped = head.startswith(b"\x1f\x8b")
    if gzipped and not path.endswith(".gz"):
        raise InputError(f"is gzip-compressed but its name does not end in .gz{cased}; rename it to end in .jsonl.gz",
                         path)
    if head and not gzipped and path.endswith(".gz"):
        raise InputError("is not gzip-compressed though its name ends in .gz; rename it without .gz (or compress "
                         "it with gzip)", path)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line (numbers start at 1).

    Raises InputError naming the file and line for a missing file, a line that is not UTF-8 or
    not a JSON object, or a file with no records at all. Lines are decoded one at a time, so a
    bad byte is reported on its own line, not at an offset in a buffer.
    """
    path = str(path)
    check_input_file(path)
    _check_name_fits_content(path)
    found_any = False
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    # Undecodable bytes become stand-in characters (surrogateescape), so the line they are on is
    # named; any line ending (\n, \r\n, \r) ends a line; a leading byte-order mark is dropped.
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=None) as lines:
        try:
            for line_number, line in enumerate(lines, start=1):
                if bad := UNDECODED_BYTE.search(line):
                    raise InputError(
                        f"not UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at character {bad.start() + 1} of the "
                        "line); save the file as UTF-8", path, line_number,
                    ) from None  # fmt: skip
                if not line.strip():
                    continue
                try:
                    record = JSON_LINE.decode(line)
                except json.JSONDecodeError as error:
                    if line.startswith("\ufeff"):  # only the file's first is dropped: files joined with cat keep theirs
                        raise InputError("starts with a byte-order mark (U+FEFF; files joined together?); remove it",
                                         path, line_number) from None
                    if not found_any and (what_it_is := _what_else_it_holds(path)):
                        raise InputError(what_it_is, path, line_number) from None
                    what = error.msg.removesuffix(" at")  # "Invalid control character at" already ends so
                    raise InputError(f"not valid JSON ({what} at column {error.pos + 1})", path, line_number) from None
                except RepeatedKey as error:
                    raise InputError(f"an object names the field {shown(str(error))} twice (JSON would keep only the "
                                     "last value); keep one", path, line_number) from None
                except (ValueError, RecursionError) as error:  # an integer of thousands of digits; nesting too deep
                    what = "nested too deeply" if isinstance(error, RecursionError) else str(error)
                    raise InputError(f"not valid JSON for this reader ({what})", path, line_number) from None
                if not isinstance(record, dict):
                    if not found_any and (what_it_is := _what_else_it_holds(path)):
                        raise InputError(what_it_is, path, line_number)
                    raise InputError(f"expected a JSON object, got {type(record).__name__}", path, line_number)
                found_any = True
                yield line_number, record
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise InputError(f"cannot be read ({error}); is it truncated?", path) from None
    if not found_any:
        raise InputError("contains no records (the file is empty)", path)


# A whole JSON document larger than this is not read to say what it is (the message then names the line)
WHOLE_DOCUMENT_LIMIT = 64 * 2**20


def _what_else_it_holds(path: str) -> str | None:
    """What ``path`` holds where it is not JSON lines but a table (CSV or TSV, by its name) or one
    JSON document (a JSON array, or an object spread over lines as the stages write their run
    records), for a message; else None."""
    table = path.lower().removesuffix(".gz")
    if table.endswith((".csv", ".tsv")):
        # (read as text, every column: a query "404" stays text; scores and grades may be numeric strings)
        separator = "\\t" if table.endswith(".tsv") else ","
        return (f"is a {table[-3:].upper()} table, not JSON lines (one record a line) or Parquet, which the stages "
                f"read; convert it, e.g. python -c \"import pandas as p; p.read_csv({path!r}, sep='{separator}', "
                "dtype=str, keep_default_na=False).to_json('FILE.jsonl', orient='records', lines=True, "
                "force_ascii=False)\"")
    if os.path.getsize(path) > WHOLE_DOCUMENT_LIMIT:
        return None
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8-sig") as file:
            document = json.loads(file.read(WHOLE_DOCUMENT_LIMIT))
    except (OSError, EOFError, zlib.error, ValueError, RecursionError):
        return None
    lines = "this stage reads JSON lines, one record a line"
    if isinstance(document, list):
        return (f"holds a JSON array of {len(document)} records, not JSON lines (one record a line); write one "
                f"record a line (e.g. jq -c '.[]' {path} > FILE.jsonl)")
    if not isinstance(document, dict):
        return None
    if {"command", "script"} <= document.keys():
        return f"is a run's arguments record (the args.json a stage writes beside its output), not data; {lines}"
    if {"source", "made_with"} <= document.keys():
        return "is stage 1's run record (.run.json), not data: pass the scores file it sits beside"
    if "queries_evaluated" in document:
        return f"is evaluation.py's report, not data; {lines}"
    return f"holds one JSON object spread over several lines (a .json file), not JSON lines; {lines}"


def check_encodable(value: str, what: str, path: str, line: int) -> str:
    """``value`` (``what``, named so in a message: 'field "query"'), or InputError if it cannot be
    written as UTF-8: JSON may escape half of a surrogate pair (``\\ud83d`` alone, from text cut
    inside an emoji), which no tokenizer takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"{what} holds a lone surrogate \\u{ord(value[error.start]):04x} at character {error.start + 1} "
            "(half of an escaped emoji?); remove or repair it", path, line,
        ) from None  # fmt: skip
    return value


def dumps(record: dict[str, Any]) -> str:
    """One record as one JSON line (UTF-8 kept as is, no trailing newline)."""
    return json.dumps(record, ensure_ascii=False)


def get_text(record: dict, name: str, path: str, line: int) -> str:
    """The string field ``name`` of a record, or an InputError naming file, line and field."""
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: {sorted(record)})', path, line)
    value = record[name]
    if not isinstance(value, str):
        raise InputError(f'field "{name}" must be a string, got {type(value).__name__}', path, line)
    return check_encodable(value, f'field "{name}"', path, line)


def get_text_list(record: dict, name: str, path: str, line: int, required: bool = True) -> list[str]:
    """The list-of-strings field ``name`` (a lone string counts as a list of one). A field not
    ``required`` that is missing or null (as Parquet and ``datasets`` hold a list a record lacks) is empty."""
    value = record.get(name)
    if value is None and not required:
        return []
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: {sorted(record)})', path, line)
    if isinstance(value, str):
        return [check_encodable(value, f'field "{name}"', path, line)]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(f'field "{name}" must be a list of strings', path, line)
    for item in value:
        check_encodable(item, f'field "{name}"', path, line)
    return value


def number_in_text(text: str) -> float | None:
    """The number a string such as ``" 0.75"`` or ``"-1e3"`` spells, or None where it spells none.
    Only ASCII decimal notation: Python's float() also takes ``"1_000"`` and other scripts' digits,
    which are no numbers in a data file."""
    text = text.strip()
    if not text.isascii() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def finite_number(value: Any) -> float | None:
    """The finite number ``value`` is, or spells as a numeric string (``"0.75"``, see number_in_text);
    None for anything else: booleans, NaN, infinities, integers beyond float's range, other types.
    A Decimal (a Parquet decimal column) counts as the float nearest it."""
    if isinstance(value, str):
        value = number_in_text(value)
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def get_number(record: dict, name: str, path: str, line: int) -> float:
    """The finite numeric field ``name``; numeric strings such as ``"0.75"`` are accepted."""
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: {sorted(record)})', path, line)
    value = record[name]
    if (number := finite_number(value)) is not None:
        return number
    # what finite_number refused, said precisely
    if isinstance(value, bool):
        raise InputError(f'field "{name}" must be a number, got a boolean', path, line)
    if isinstance(value, str) and number_in_text(value) is None:
        raise InputError(f'field "{name}" must be a number, got the string {shown(value)}', path, line)
    if not isinstance(value, (int, float, str)):
        raise InputError(f'field "{name}" must be a number, got {type(value).__name__}', path, line)
    raise InputError(f'field "{name}" is {str(value)[:40]}; scores must be finite numbers', path, line)


# check_writable's probe: an empty folder made and removed at once (another process of a torchrun job may
# see it for that instant, so a folder's listing never counts it as a file of its own)
WRITE_CHECK_PREFIX = ".write-check."


def check_writable(path: str | Path, flag: str, folder: bool = False) -> None:
    """InputError, before any long work, where ``path`` (the value of ``flag``) cannot be written:
    a file where a folder is wanted or the reverse, a file in the way of a folder it needs, or a
    folder without write permission. Where it can, nothing is left created."""
    if not folder and str(path).endswith(("/", os.sep)):  # Path() would drop the slash that names a folder
        raise InputError(f"{flag} {path} ends in '/', which names a folder; give a file name")
    path = Path(path)
    _check_name_lengths(path, flag)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    existing = path if folder and path.is_dir() else path.parent
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            raise InputError(f"{flag} {path} cannot be written: {link} is a link to {os.readlink(link)}, which does "
                             "not exist")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {path} cannot be written: {existing} is a file, not a folder")
    try:  # a real attempt: os.access lets root through even where nothing can be made (/proc, /sys)
        os.rmdir(tempfile.mkdtemp(prefix=WRITE_CHECK_PREFIX, dir=existing))
    except OSError as error:
        reason = (f"no permission to write in {existing}" if error.errno in (errno.EACCES, errno.EPERM)
                  else f"nothing can be made in {existing} ({error.strerror})")
        raise InputError(f"{flag} {path} cannot be written: {reason}") from None


def _check_name_lengths(path: Path, flag: str) -> None:
    """InputError where a name in ``path`` is longer than the file system takes (its nearest existing
    folder's limit): check_writable's probe, a short name, would pass, and the run fail at its first write."""
    folder = path.parent
    while not os.path.isdir(folder) and folder != folder.parent:  # (isdir, unlike Path.exists, takes any name)
        folder = folder.parent
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # (no pathconf on Windows)
        longest = NAME_MAX
    for name in path.parts:
        if len(os.fsencode(name)) > longest:
            raise InputError(f"{flag} {path} cannot be written: the name {shown(name, 40)} is "
                             f"{len(os.fsencode(name))} bytes, longer than the file system takes ({longest})")


@contextmanager
def no_empty_folders_left(folder: str | Path) -> Iterator[None]:
    """On an error in the block, remove ``folder`` and the parents the block created for it where
    they are still empty: a run refused early leaves nothing behind, a run that wrote something keeps it."""
    missing = _missing_folders(Path(folder))
    try:
        yield
    except BaseException:
        _remove_if_empty(missing)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first: as spelled (a/../b
    makes a too), and not the name of a folder that exists (a/.. while a is missing)."""
    return [path for path in (folder, *folder.parents)
            if not path.exists() and not os.path.exists(os.path.abspath(path))]


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is still empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty, or never made
            pass


@contextmanager
def only_writer(output: Path, lock_path: Path | None = None, hint: str = "") -> Iterator[None]:
    """Hold the lock file ``lock_path`` (default ``OUT.lock`` beside ``output``) for the block, so
    two runs never write one output at once (a second start of the same command would interleave
    or mix its files with the first's); InputError, ending with ``hint``, if another process holds
    it. Where the file system has no flock (some network file systems) it warns and goes on
    unlocked; so does it, silently, where the system has none (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path = lock_path or output.with_name(output.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        lock = open(lock_path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise InputError(f"another run is writing {output} at this moment; wait for it or stop it "
                             f"first{hint}") from None
        except OSError as error:
            lock.close()
            logger.warning("cannot lock %s (%s); going on without the guard against a second run", lock_path, error)
            yield
            return
        # a run that finished just now unlinked the file this one locked: lock the current one instead
        try:
            if os.fstat(lock.fileno()).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        lock.close()


@contextmanager
def sole_writer(output: Path) -> Iterator[None]:
    """only_writer of one output file, leaving no folder made for its lock where the block fails."""
    with no_empty_folders_left(output.parent), only_writer(output):
        yield


def check_not_an_input(output_path: str | Path, input_files: Iterable[str], flag: str) -> None:
    """InputError where ``output_path`` (the value of ``flag``) is one of ``input_files`` (through
    any link), which writing it would destroy."""
    written = os.path.realpath(output_path)
    for input_file in input_files:
        if os.path.realpath(input_file) == written:
            raise InputError(f"{flag} {output_path} is an input of this run ({input_file}): writing it would destroy "
                             "it; choose another path")


def _process_runs(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


@contextmanager
def naming_file(path: str | Path) -> Iterator[None]:
    """Give an OSError of the block that names no file (a write or flush that found the disk full,
    an I/O error) the name ``path``, so its one-line message says which file could not be written."""
    try:
        yield
    except OSError as error:
        _name_file(error, path)
        raise


def _name_file(error: BaseException | None, path: str | Path) -> None:
    """Set ``error``'s file name to ``path`` where it is an OSError that names none (see naming_file)."""
    if isinstance(error, OSError) and error.filename is None:
        error.filename = str(path)


# AtomicWriter's temporary files are NAME.HOST.PID + this
TEMPORARY_SUFFIX = ".tmp"


def is_unfinished_write(name: str) -> bool:
    """Whether the file ``name`` is one that this package's writers hold only while they write:
    check_writable's probe, or an AtomicWriter's temporary file (``NAME.HOST.PID.tmp``)."""
    return (name.startswith(WRITE_CHECK_PREFIX)
            or re.fullmatch(rf".+\.\d+{re.escape(TEMPORARY_SUFFIX)}", name) is not None)


# The longest file name most file systems take, in bytes (ext4, XFS, Btrfs, tmpfs, APFS, NTFS's 255 characters)
NAME_MAX = 255


def _temporary_prefix(name: str, host: str) -> str:
    """``NAME.HOST.`` for AtomicWriter's temporary files, where ``NAME.HOST.PID.tmp`` fits in a file name
    (NAME_MAX bytes); for a name near that limit, which fits but would not with these added, its start
    and a digest of the whole name instead of NAME: the same for every process writing it, and unlike a
    name that starts alike."""
    prefix = f"{name}.{host}."
    room = NAME_MAX - len(f".{2**22}{TEMPORARY_SUFFIX}")  # (Linux's largest process id)
    if len(os.fsencode(prefix)) <= room:
        return prefix
    digest = hashlib.blake2b(os.fsencode(name), digest_size=6).hexdigest()
    host = os.fsencode(host)[:64].decode("utf-8", "ignore")
    kept = os.fsencode(name)[: room - len(os.fsencode(f"~{digest}.{host}."))].decode("utf-8", "ignore")
    return f"{kept}~{digest}.{host}."


class AtomicWriter:
    """Write a file under a temporary name and move it to its final name only when the ``with``
    block finishes without error, so a crash never leaves a truncated file that looks complete.
    A name ending in ``.gz`` is written gzipped."""

    def __init__(self, path: str | Path):
        self.path = Path(os.path.abspath(path))  # (no "..": the folders it makes are those it removes on failure)
        # several processes may write one run's files (torchrun's, on several machines): each its own temporary file
        self._tmp_prefix = _temporary_prefix(self.path.name, socket.gethostname())
        self.tmp_path = self.path.with_name(f"{self._tmp_prefix}{os.getpid()}{TEMPORARY_SUFFIX}")
        self._file: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        self._made_folders = _missing_folders(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporary_files()
        if self.path.name.endswith(".gz"):
            self._raw = open(self.tmp_path, "wb")
            # the header names the file by its final name (gunzip -N restores that), not the temporary one,
            # and no time, so the same records give the same bytes
            self._file = io.TextIOWrapper(gzip.GzipFile(self.path.name, "wb", fileobj=self._raw, mtime=0),
                                          encoding="utf-8")
        else:
            self._file = self._raw = open(self.tmp_path, "w", encoding="utf-8")
        return self._file

    def _remove_stale_temporary_files(self) -> None:
        """Delete this name's temporary files that processes of this machine left when they were
        killed outright (SIGKILL, a power cut): their process ids no longer run."""
        for stale in self.path.parent.glob(f"{glob.escape(self._tmp_prefix)}*{TEMPORARY_SUFFIX}"):
            pid = stale.name[len(self._tmp_prefix):-len(TEMPORARY_SUFFIX)]
            if pid.isdigit() and not _process_runs(int(pid)):
                stale.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        _name_file(exc, self.path)  # a write of the block that found the disk full: the message names the file
        if exc_type is None:
            try:
                if self._file is not self._raw:
                    self._file.close()  # a GzipFile writes its end now, and leaves the file it was given open
                self._raw.flush()
                try:
                    os.fsync(self._raw.fileno())
                except io.UnsupportedOperation:
                    pass
                except OSError as error:  # a file system without fsync goes on; one that could not store the data not
                    if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                self._raw.close()
                os.replace(self.tmp_path, self.path)
            except BaseException as error:  # a disk found full only now (the last flush), a rename refused
                self._discard()
                if isinstance(error, OSError) and error.filename in (None, str(self.tmp_path)):  # (gone now)
                    error.filename, error.filename2 = str(self.path), None
                raise
        else:
            self._discard()

    def _discard(self) -> None:
        """Close the temporary file (its unwritten rest cannot be saved: a full disk) and remove it."""
        for file in (self._file, self._raw):
            try:
                file.close()
            except OSError:
                pass
        self.tmp_path.unlink(missing_ok=True)
        _remove_if_empty(self._made_folders)  # a failed write leaves no empty folders behind
