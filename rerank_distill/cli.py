"""What every stage script does the same way: parse its dataclass arguments, set up logging,
record the resolved arguments beside its output, and turn user mistakes into one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rerank_distill.errors import InputError
from rerank_distill.jsonl import UNDECODED_BYTE, AtomicWriter

logger = logging.getLogger("rerank_distill")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written (its tables keep their lines), and each flag's default
    where it has one its help does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if getattr(action, "set_by_script", False):  # whatever the library's help says its default is
            return f"{text} (default here: %(default)s)"
        if action.required or action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


# Names other tools give flags, where spelling leads astray (train.py's --batch_size is closest to
# --batch_sampler): what a mistyped flag of these names is said to mean, where the script has that flag
WELL_KNOWN_NAMES = {
    "batch_size": "per_device_train_batch_size", "batchsize": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size", "bs": "per_device_train_batch_size",
    "lr": "learning_rate", "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
}


def parse_args(dataclass_types: tuple[type, ...], description: str, argv: list[str] | None = None,
               help_overrides: dict[str, str] | None = None, shown_defaults: dict[str, str] | None = None) -> tuple:
    """Parse the command line into one instance of each dataclass (``--help`` lists every field's
    help). ``help_overrides`` replaces the help of the flags it names, by field name;
    ``shown_defaults`` are the defaults ``--help`` shows where the script adds its own to the
    user's flags (only shown: the script's own flags still set them)."""
    from transformers import HfArgumentParser

    # no abbreviations: train.py reads which flags were passed from the command line as written
    parser = HfArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter,
                              allow_abbrev=False)
    tokens = list(sys.argv[1:] if argv is None else argv)
    asks_help = any(token in ("-h", "--help") for token in tokens)
    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's --no_X repeats --X's help
            action.help, action.default = f"Turn --{action.dest} off.", argparse.SUPPRESS
            continue
        if action.dest in (help_overrides or {}):
            action.help = help_overrides[action.dest]
        if asks_help and action.dest in (shown_defaults or {}):
            action.default, action.set_by_script = shown_defaults[action.dest], True
    flags = [option for action in parser._actions for option in action.option_strings]

    def refuse_unknown(unknown: list[str]) -> None:
        typo = next((token for token in unknown if token.startswith("-")), unknown[0])
        name = typo.split("=", 1)[0]
        known = f"--{WELL_KNOWN_NAMES.get(name.replace('-', '_').lstrip('_'))}"
        # a short abbreviation is not close to any one flag by spelling, but begins several
        close = [known] * (known in flags) or difflib.get_close_matches(name, flags, n=1) or sorted(
            flag for flag in flags if flag.startswith(name) and ("-" in name[2:] or "-" not in flag[2:]))  # --a_b, not --a-b too
        meant = close[0] if len(close) == 1 else f"one of {', '.join(close[:6])}{', ...' if close[6:] else ''}"
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" (did you mean {meant}?)" if close else ""))

    # a mistyped flag first: argparse would otherwise report the flag it was meant to be as missing
    options = tokens[: tokens.index("--")] if "--" in tokens else tokens  # ("--": what follows is no flag)
    # (and a flag written with one dash, "-input_path", which argparse takes for a value of no flag)
    if mistyped := [token for token in options if token.split("=", 1)[0] not in flags
                    and (token.startswith("--") or (token.startswith("-") and f"-{token.split('=', 1)[0]}" in flags))]:
        refuse_unknown(mistyped)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        refuse_unknown(unknown)
    for arguments in parsed:
        expand_home(arguments)
    return tuple(parsed)


# The flags that name files or folders (hub ids among them, which never begin with "~").
PATH_FLAGS = frozenset({
    "model_path", "input_path", "output_dir", "output_path", "cache_dir", "model_name_or_path", "train_data",
    "selection_data", "eval_data", "model_before_path", "model_after_path", "dataset_path", "teacher_scores",
    "resume_from_checkpoint",
})  # fmt: skip


def expand_home(arguments: Any) -> None:
    """Expand a leading ``~`` in the path flags of ``arguments`` (a parsed dataclass): the shell leaves
    it alone in ``--flag=~/x`` and in a quoted launcher variable (``MODEL_DIR="~/out"``), and a run
    would otherwise report ``~/x`` missing, or write its output into a folder named ``~`` here."""
    for spec in dataclasses.fields(arguments):
        value = getattr(arguments, spec.name)
        if spec.name not in PATH_FLAGS or value is None:
            continue
        expanded = [os.path.expanduser(v) for v in value] if isinstance(value, list) else os.path.expanduser(value)
        if expanded != value:
            setattr(arguments, spec.name, expanded)


def check_minimums(args: Any, **minimums: int) -> None:
    """InputError for the first numeric flag of ``args`` below its minimum (``batch_size=1``);
    a flag left unset (None) is not checked."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise InputError(f"--{name} must be at least {minimum}, got {value}")


def check_finite(args: Any, shown: dict[str, str] | None = None) -> None:
    """InputError for the first float flag of ``args`` (or list of floats) that is NaN or infinite,
    named as ``shown`` names it (field name -> flag), else ``--name``. argparse's float() takes "nan"
    and "inf"; a flag no teacher or model reads is only warned about, and args.json would hold NaN
    or Infinity, which is no JSON."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise InputError(f"{(shown or {}).get(name, f'--{name}')} must be a finite number, got {value}")


def check_utf8_text(args: Any, *names: str) -> None:
    """InputError for the first text flag of ``args`` (a string or a list of them) holding bytes
    that are not UTF-8: Python keeps them as lone surrogates (surrogateescape), which no tokenizer
    takes, so a prompt built from them would fail only once the teacher runs."""
    for name in names:
        values = getattr(args, name)
        for value in [values] if isinstance(values, str) else values or []:
            if bad := UNDECODED_BYTE.search(value):
                raise InputError(f"--{name} holds a byte that is not UTF-8 (0x{ord(bad.group()) - 0xDC00:02x} at "
                                 f"character {bad.start() + 1}); give the text in UTF-8 (is the terminal or script "
                                 "in another encoding?)")


def warn_unread(args: Any, unread: dict[str, str]) -> None:
    """Warn about each flag named in ``unread`` (flag -> why these settings never read it) that was
    given a value other than its default: a setting the user asked for must not vanish unnoticed."""
    defaults = {spec.name: spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
                for spec in dataclasses.fields(args)}
    for name, reason in unread.items():
        if getattr(args, name) != defaults[name]:
            logger.warning("--%s %s is not read: %s", name, getattr(args, name), reason)


def command_line(script_file: str, argv: list[str] | None) -> list[str]:
    """The command a stage ran as: its script's name and the arguments it parsed (``argv``, or the
    process's own when None), so a stage called from Python records its own flags, not its caller's."""
    return [Path(script_file).name, *(sys.argv[1:] if argv is None else argv)]


def setup_logging() -> None:
    """Log lines as ``HH:MM:SS LEVEL message`` on stderr, INFO and up."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO,
        stream=sys.stderr,
    )


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses and dicts as objects, tuples as lists, enums
    as their values, anything else as its text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):  # enums
        return value.value
    return str(value)


def write_run_args(path: str | Path, command: list[str], **sections: Any) -> Path:
    """Write the resolved arguments of this run, its command line (see command_line) and library
    versions as JSON. Each keyword becomes one section (``script=..., training=...``). Returns the
    path written.
    """
    record = {
        "command": command,
        "working_directory": os.getcwd(),  # what the command's relative paths are relative to
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), **_installed_versions()},
    }
    for name, value in sections.items():
        record[name] = to_jsonable(value)
    return write_json(path, record)


def read_run_args(path: str | Path) -> dict | None:
    """The record write_run_args wrote at ``path``, or None where there is none."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_made_by(path: str | Path) -> str | None:
    """The script whose run wrote the record at ``path`` (its command's first word, ``train.py``), or
    None where there is none, or it is unreadable or no such record."""
    try:
        script = json.loads(Path(path).read_text(encoding="utf-8"))["command"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return script if isinstance(script, str) else None


def _installed_versions() -> dict[str, str]:
    """Versions of the libraries behind the results, read from their package metadata: importing
    them (torch alone takes seconds) would slow stages that never use them."""
    versions = {}
    for module, distribution in (("torch", "torch"), ("transformers", "transformers"),
                                 ("sentence_transformers", "sentence-transformers")):  # fmt: skip
        try:
            versions[module] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:  # args.json must not fail on a missing one
            pass
    return versions


def beside_output(output_path: str | Path, suffix: str) -> Path:
    """A file written next to an output, named after it: ``out/report.json`` with ``.args.json``
    -> ``out/report.args.json`` (and so for ``.jsonl`` and ``.gz`` names, or none)."""
    stem = str(output_path).removesuffix(".gz")
    for extension in (".jsonl", ".json"):
        if stem.endswith(extension):
            return Path(stem.removesuffix(extension) + suffix)
    return Path(stem + suffix)


def refuse_shared_record(output_path: str, flag: str) -> None:
    """InputError where the run record beside ``output_path`` (beside_output's ``.args.json``) is
    another output's, still there beside it: ``t.jsonl`` and ``t.jsonl.gz`` share ``t.args.json``,
    and this run's record would leave that output without one (or with one that says it is this)."""
    record_path = beside_output(output_path, ".args.json")
    try:
        recorded = json.loads(record_path.read_text(encoding="utf-8"))["script"]["output_path"]
    except (OSError, ValueError, KeyError, TypeError):  # none, or no record of this kind: nothing to keep
        return
    other = record_path.parent / Path(str(recorded)).name
    if other.name != Path(output_path).name and other.exists():
        raise InputError(f"{flag} {output_path}: its run record {record_path} is that of {other} beside it, which "
                         "this run's would replace; name this output otherwise (another stem), or delete the other")


def write_json(path: str | Path, record: dict) -> Path:
    """Write ``record`` as indented JSON under its final name only once it is complete (AtomicWriter)."""
    text = json.dumps(to_jsonable(record), indent=2, ensure_ascii=False)
    # a file name or argument of bytes that are not UTF-8 reaches Python as lone surrogates
    # (surrogateescape), which UTF-8 cannot hold: written as their JSON escapes, they read back the same
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    with AtomicWriter(path) as out:
        out.write(text + "\n")
    return Path(path)


# What a scheduler sends before it kills a job (SLURM, Kubernetes: SIGTERM) and a closed terminal (SIGHUP)
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


_stops_received: list[str] = []  # the stop signals stops_as_ctrl_c's block received (see stop_if_signalled)


def _stop_as_ctrl_c(signum: int, frame) -> None:
    _stops_received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_stops_received[-1])


def stop_if_signalled() -> None:
    """Raise again the KeyboardInterrupt of a stop signal received earlier in stops_as_ctrl_c's
    block: one that landed in a finalizer (a ``__del__``), where Python prints and drops it, would
    else be lost, and the run go on for hours. Long loops call it between units of work."""
    if _stops_received:
        raise KeyboardInterrupt(_stops_received[-1])


def interruption_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or stop signal, see stops_as_ctrl_c) that ``error`` was raised while handling,
    or None: under torchrun a process stopped inside a collective fails in the cleanup that
    follows (another collective, with the other processes gone: 'Connection closed by peer'),
    and that error hides the interruption behind it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def stops_as_ctrl_c() -> Iterator[None]:
    """In the block, SIGTERM and SIGHUP stop the run as Ctrl-C does: resumable stages save what
    they finished and say how to continue, where the signals' default would end the process
    unsaid. A signal ignored (``nohup``'s SIGHUP) or handled already stays so."""
    previous = {}
    if threading.current_thread() is threading.main_thread():  # (only the main thread may set a handler)
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)  # (no SIGHUP on Windows)
            if number is not None and signal.getsignal(number) is signal.SIG_DFL:
                previous[number] = signal.signal(number, _stop_as_ctrl_c)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stops_received.clear()  # handled in the block, or by whatever catches its KeyboardInterrupt


# OSErrors the machine, not the program, is to blame for: what to do before the command is run again
MACHINE_FAILURES = {
    errno.ENOSPC: "free some space and run the command again",
    getattr(errno, "EDQUOT", errno.ENOSPC): "free some space and run the command again",  # (no EDQUOT on Windows)
    errno.EIO: "the disk or file system failed; check it, then run the command again",  # a failing disk, a lost NFS
}


def run_main(main: Callable[[], Any]) -> None:
    """Call a stage's ``main`` and exit: 0 on success, 2 with a one-line message on a user mistake
    (a file it may not read or write, or a path it cannot use, among them), 1 with one line where
    the disk is full or fails, 130 on Ctrl-C and 128 + the signal's number on SIGTERM or SIGHUP
    (resumable stages say how to continue before they get here)."""
    setup_logging()
    try:
        with stops_as_ctrl_c():
            main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # what the user or the machine must change, said in one line; any other: a bug's traceback
        where = f"{error.filename}: " if error.filename else ""
        # a file it may not read or write, or a path it cannot use (a folder where a file goes, a name too long)
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG):
            print(f"error: {where}{error.strerror}", file=sys.stderr)
            sys.exit(2)
        if advice := MACHINE_FAILURES.get(error.errno):
            print(f"error: {where}{error.strerror}: {advice} (stage 1 continues where it stopped; train.py with "
                  "--resume_from_checkpoint last)", file=sys.stderr)
            sys.exit(1)
        raise
    except KeyboardInterrupt as stop:
        name = str(stop) if str(stop) in STOP_SIGNALS else None
        status = 128 + signal.Signals[name] if name else 130
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            # a second Ctrl-C while Python shuts down (joining its threads, running finalizers) printed a
            # traceback of the shutdown itself: it ends the process at once now, with the same status
            signal.signal(signal.SIGINT, lambda signum, frame: os._exit(status))
        print(f"interrupted ({name})" if name else "interrupted", file=sys.stderr)
        sys.exit(status)
