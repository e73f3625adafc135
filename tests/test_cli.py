"""What every stage script's command line does the same way: --help explains each flag, and a
mistyped flag is a one-line error that suggests the flag meant."""

import dataclasses
import os
import re
import shutil
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import create_triplets
import evaluation
import generate_logits
import train

SCRIPTS = {
    "generate_logits": (generate_logits, generate_logits.GenerateLogitsArguments),
    "create_triplets": (create_triplets, create_triplets.TripletArguments),
    "train": (train, train.ScriptArguments),
    "evaluation": (evaluation, evaluation.EvaluationArguments),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_every_flag_of_the_scripts_own_arguments(name, capsys):
    module, arguments = SCRIPTS[name]
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for field in dataclasses.fields(arguments):
        assert f"--{field.name}" in shown
        assert field.metadata.get("help"), f"--{field.name} has no help"


@pytest.mark.parametrize("name, required, typo, meant", [
    ("generate_logits", ["--model_path", "m", "--input_path", "i", "--output_dir", "o"], "--batchsize", "--batch_size"),
    ("create_triplets", ["--input_path", "i", "--output_path", "o"], "--formats", "--format"),
    ("train", ["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o"], "--lerning_rate",
     "--learning_rate"),
    ("evaluation", ["--model_before_path", "m", "--dataset_path", "d"], "--protocl", "--protocol"),
    # a flag's beginning is no abbreviation of it (train.py reads which flags were passed by their names)
    ("create_triplets", ["--input_path", "i", "--output_path", "o"], "--top", "--top_k"),
    ("train", ["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o"], "--eval_step", "--eval_steps"),
    # the flag meant is required: named as mistyped, not as missing
    ("train", ["--train_data", "t", "--output_dir", "o"], "--model_name", "--model_name_or_path"),
    # so with one dash too (argparse took it for an unknown value, and reported the flag meant as missing)
    ("create_triplets", ["--output_path", "o"], "-input_path", "--input_path"),
    # a short beginning close to no one flag: the flags it begins, each once (not its --a-b spelling too)
    ("generate_logits", ["--input_path", "i", "--output_dir", "o"], "--mod", "--model_path"),
    ("train", ["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o"], "--per_dev",
     "one of --per_device_eval_batch_size, --per_device_train_batch_size"),
    # names other tools use, which spelling would match to the wrong flag (--batch_sampler, --loss)
    ("train", ["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o"], "--batch_size",
     "--per_device_train_batch_size"),
    ("train", ["--model_name_or_path", "m", "--train_data", "t", "--output_dir", "o"], "--lr", "--learning_rate"),
    # where the script has no such flag, spelling decides as before
    ("evaluation", ["--model_before_path", "m", "--dataset_path", "d"], "--batchsize", "--batch_size"),
])  # fmt: skip
def test_a_mistyped_flag_is_a_one_line_error_naming_the_flag_meant(name, required, typo, meant, capsys):
    module, _ = SCRIPTS[name]
    with pytest.raises(SystemExit) as exit_:
        module.main([*required, typo, "3"])
    assert exit_.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith(f"error: unrecognized arguments: {typo} (did you mean {meant}?)")


def test_the_demo_builder_explains_itself_and_builds_nothing_for_help(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "rerank_distill.toy", "--help"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert shown.returncode == 0 and "out_dir" in shown.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_block_that_fails_removes_only_the_empty_folders_it_made(tmp_path):
    from rerank_distill.jsonl import no_empty_folders_left

    (tmp_path / "kept").mkdir()
    for target in (tmp_path / "kept" / "a" / "b", tmp_path / "x" / ".." / "made" / "c"):
        with pytest.raises(RuntimeError), no_empty_folders_left(target):
            target.mkdir(parents=True)  # as only_writer makes an output's folder: x/.. makes x
            raise RuntimeError("refused")
    assert [path.name for path in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    with pytest.raises(RuntimeError), no_empty_folders_left(tmp_path / "wrote"):
        (tmp_path / "wrote").mkdir()
        (tmp_path / "wrote" / "partial.jsonl").write_text("{}\n", encoding="utf-8")
        raise RuntimeError("failed after writing")
    assert (tmp_path / "wrote" / "partial.jsonl").exists()  # what a run wrote stays, to resume from


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_launchers_help_is_its_scripts_help_and_nothing_else(name, tmp_path):
    # run from an empty folder, where the launchers' defaults (output/scores/...) do not exist and would be warned of
    shown = subprocess.run(["bash", str(Path(__file__).parents[1] / f"{name}.sh"), "--help"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout.startswith(f"usage: {name}.py")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_where_nothing_can_be_made_is_refused_before_any_work_even_for_root(tmp_path):
    from rerank_distill.errors import InputError
    from rerank_distill.jsonl import check_writable

    # os.access lets root write anywhere, /proc included, where the run would then fail with a traceback
    with pytest.raises(InputError, match=r"^--output_path /proc/missing/t.jsonl cannot be written: "):
        check_writable("/proc/missing/t.jsonl", "--output_path")
    check_writable(tmp_path / "new" / "t.jsonl", "--output_path")
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind



def test_an_output_name_longer_than_the_file_system_takes_is_refused_before_any_work(tmp_path):
    """The probe (a short name in the folder) passed, and the run failed at its first write with a traceback."""
    from rerank_distill.errors import InputError
    from rerank_distill.jsonl import check_writable

    with pytest.raises(InputError, match=r"^--output_path .* cannot be written: the name 'aaa.* is 256 bytes, longer "
                                         r"than the file system takes \(255\)$"):
        check_writable(tmp_path / ("a" * 250 + ".jsonl"), "--output_path")
    with pytest.raises(InputError, match="is 256 bytes"):
        check_writable(tmp_path / ("a" * 256) / "model", "--output_dir", folder=True)
    check_writable(tmp_path / ("a" * 249 + ".jsonl"), "--output_path")
    assert list(tmp_path.iterdir()) == []


def test_an_output_file_named_with_a_trailing_slash_is_refused_before_any_work(tmp_path):
    """Path() drops the slash, so runs went ahead and failed at their very end, writing a file over a folder."""
    from rerank_distill.errors import InputError
    from rerank_distill.jsonl import check_writable

    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"query": "q", "passage": "a", "score": 1}\n{"query": "q", "passage": "b", "score": 0}\n')
    with pytest.raises(InputError, match=f"^--output_path {tmp_path}/new/ ends in '/', which names a folder; give a "
                                         "file name"):
        create_triplets.main(["--input_path", str(scores), "--output_path", f"{tmp_path}/new/"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]
    check_writable(f"{tmp_path}/new/", "--output_dir", folder=True)  # a folder may end in one


@pytest.mark.parametrize("error, status, message", [
    (PermissionError(13, "Permission denied", "data/train.jsonl"), 2, "error: data/train.jsonl: Permission denied"),
    # a folder where a run writes a file beside its output (args.json): found only as it writes
    (IsADirectoryError(21, "Is a directory", "output/scores/args.json"), 2, "error: output/scores/args.json: Is a "
                                                                            "directory"),
    (OSError(28, "No space left on device", "output/scores/train_scores.jsonl.partial"), 1,
     "error: output/scores/train_scores.jsonl.partial: No space left on device: free some space and run the command "
     "again"),
    (OSError(5, "Input/output error", "output/model/checkpoint-40"), 1,
     "error: output/model/checkpoint-40: Input/output error: the disk or file system failed; check it, then run the "
     "command again"),
])
def test_a_file_the_run_may_not_touch_or_a_full_disk_stop_it_in_one_line(capsys, error, status, message):
    from rerank_distill.cli import run_main

    def main():
        raise error

    with pytest.raises(SystemExit) as stopped:
        run_main(main)
    assert stopped.value.code == status
    assert capsys.readouterr().err.strip().startswith(message)


def test_a_signal_the_user_ignored_stays_ignored_during_a_run():
    import signal

    from rerank_distill.cli import run_main

    seen = []
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        run_main(lambda: seen.append((signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM))))
        assert seen[0][0] is signal.SIG_IGN and seen[0][1] not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_second_ctrl_c_while_the_interrupted_run_shuts_down_ends_it_at_once_with_the_same_status(monkeypatch):
    import signal

    from rerank_distill import cli

    def main():
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.run_main(main)
        assert stopped.value.code == 130
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # (the handler a second Ctrl-C would run)
        assert exits == [130]  # not a KeyboardInterrupt raised into Python's shutdown
    finally:
        signal.signal(signal.SIGINT, previous)


def test_other_os_errors_keep_their_traceback_as_the_bugs_they_are():
    from rerank_distill.cli import run_main

    def main():
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):
        run_main(main)


def test_a_tilde_the_shell_left_alone_is_the_home_folder(monkeypatch, tmp_path):
    from rerank_distill.cli import parse_args

    monkeypatch.setenv("HOME", str(tmp_path))  # --flag=~/x and a quoted launcher variable reach the script as ~/x
    (args,) = parse_args((generate_logits.GenerateLogitsArguments,), "", [
        "--model_path", "~/judge", "someone/judge", "--input_path=~/a.jsonl", "--output_dir=~/scores",
        "--instruction", "~ is no path here"])
    assert args.model_path == [str(tmp_path / "judge"), "someone/judge"]
    assert args.input_path == [str(tmp_path / "a.jsonl")]
    assert args.output_dir == str(tmp_path / "scores")
    assert args.instruction == "~ is no path here"
    assert args.cache_dir is None


REPO = Path(__file__).parents[1]
# the launchers a user runs, on a Mac too, where `#!/usr/bin/env bash` is bash 3.2 (bench/gpu_checks.sh
# is for Linux GPU machines: it uses bash 4 and GNU timeout)
LAUNCHERS = ["generate_logits.sh", "create_triplets.sh", "train.sh", "evaluation.sh", "demo.sh"]
# arrays that hold a word wherever they are expanded bare: a flag, or a list checked not to be empty
NEVER_EMPTY = {"input_paths", "args"}
BASH_4_ONLY = {
    "an associative array": r"\b(declare|local|typeset) -[a-zA-Z]*A",
    "mapfile/readarray": r"\b(mapfile|readarray)\b",
    "a nameref": r"\b(declare|local|typeset) -[a-zA-Z]*n",
    "case conversion": r"\$\{\w+(\[[^]]*\])?(,|\^)",
    "a transformation": r"\$\{\w+(\[[^]]*\])?@[A-Za-z]\}",
    "&>> or |&": r"&>>|\|&",
    "a negative index": r"\[-\d+\]",
    "wait -n / coproc": r"\bwait -n\b|\bcoproc\b",
    "GNU-only flags": r"\breadlink -f|\bsed -i\b|\bdate -d\b|\bstat -c\b|\bgrep -[a-zA-Z]*P",
    "process substitution (which bash 3.2 refuses in POSIX mode, as macOS's sh)": r"<\(",
}


def code_lines(launcher: str) -> list[tuple[int, str]]:
    return [(number, line) for number, line in enumerate((REPO / launcher).read_text().splitlines(), 1)
            if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_launchers_run_in_macos_bash_3_2(launcher):
    """No bash 4 feature, and no array that may be empty expanded bare: under set -u, bash before 4.4
    stops at "${a[@]}" of an empty array ("a[@]: unbound variable"), so such arrays are expanded as
    ${a[@]+"${a[@]}"}; ${#a[@]} and ${a[*]-} are safe."""
    found = []
    for number, line in code_lines(launcher):
        found += [f"{launcher}:{number}: {what}" for what, pattern in BASH_4_ONLY.items() if re.search(pattern, line)]
        for use in re.finditer(r"\$\{(\w+)\[[@*]\]([^}]*)\}", line):
            before, name, rest = line[: use.start()], use.group(1), use.group(2)
            guarded = before.endswith(f"${{{name}[@]+\"") or rest[:1] in ("+", "-")
            if not guarded and name not in NEVER_EMPTY:
                found.append(f"{launcher}:{number}: {use.group()} bare")
    assert found == []


@pytest.mark.skipif(not shutil.which("dash"), reason="needs dash")
@pytest.mark.parametrize("launcher", [*LAUNCHERS, "bench/gpu_checks.sh"])
def test_a_launcher_run_with_sh_says_to_run_it_with_bash(launcher, tmp_path):
    # dash stopped at "set -o pipefail" or, where it has that, at the first array, saying neither is bash's
    done = subprocess.run(["dash", str(REPO / launcher), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{Path(launcher).name}: run it with bash (bash {REPO / launcher}), not sh\n"


def demo_commands(tmp_path: Path, **env: str) -> list[list[str]]:
    """Run demo.sh with a python that answers the launchers' own -c questions and records every
    stage command instead of running it; each command's arguments."""
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
                           f'printf "%s\\n" "$@" ---- >> {shlex.quote(str(tmp_path / "commands"))}\n')
    fake_python.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "demo.sh")], env={**os.environ, "PYTHON": str(fake_python), **env},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [command.splitlines() for command in (tmp_path / "commands").read_text().split("----\n") if command]


def test_the_demo_runs_its_own_settings_not_launcher_settings_the_shell_exported(tmp_path):
    recorded = demo_commands(tmp_path, DEMO_DIR=str(tmp_path / "demo"), LOSS="mse", FORMAT="ntuples", TOP_K="3",
                             BF16="maybe")  # (BF16: a name with a digit in it)
    commands = "\n".join(" ".join(arguments) for arguments in recorded)
    assert "train.py" in commands and "create_triplets.py" in commands
    assert "--loss mse" not in commands and "ntuples" not in commands and "--top_k 3" not in commands
    assert "--bf16 maybe" not in commands


def test_the_demo_runs_in_a_folder_with_a_space_in_its_name(tmp_path):
    demo = tmp_path / "my demo"
    # (generate_logits.sh refused TEACHER and INPUTS, space-separated lists, that held the folder's one path)
    arguments = next(command for command in demo_commands(tmp_path, DEMO_DIR=str(demo))
                     if command[0] == str(REPO / "generate_logits.py"))
    assert arguments[arguments.index("--model_path") + 1] == str(demo / "models" / "teacher-tiny-qwen3")
    start = arguments.index("--input_path") + 1
    assert arguments[start : start + 2] == [str(demo / "data" / "train.jsonl"), str(demo / "data" / "test.jsonl")]


def test_the_demo_reads_a_relative_demo_dir_and_python_from_the_folder_it_is_run_in(tmp_path):
    # demo.sh changes to the repository: DEMO_DIR=my-demo went there, not where it was run, and PYTHON=./python
    # was not found
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
                           f'printf "%s\\n" "$@" ---- >> {shlex.quote(str(tmp_path / "commands"))}\n')
    fake_python.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "demo.sh")], env={**os.environ, "PYTHON": "./python", "DEMO_DIR": "my-demo"},
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    recorded = [command.splitlines() for command in (tmp_path / "commands").read_text().split("----\n") if command]
    assert recorded[0] == ["-m", "rerank_distill.toy", str(tmp_path / "my-demo")]
    assert len(recorded) == 5  # every stage ran with that python
    arguments = recorded[1]
    assert arguments[arguments.index("--model_path") + 1] == str(tmp_path / "my-demo" / "models" / "teacher-tiny-qwen3")
    assert done.stdout.endswith(f"demo finished: {tmp_path / 'my-demo' / 'evaluation.json'}\n")


@pytest.mark.parametrize("name", ["create_triplets", "train", "evaluation"])
def test_a_launcher_runs_where_home_is_not_set(name, tmp_path):
    # (env -i, a systemd service without User=): reading a leading ~ as the home folder stopped the launcher
    # under set -u with "HOME: unbound variable"; bash's ~, as Python's expanduser, reads the password database
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
                           f'printf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "command"))}\n')
    fake_python.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "HOME"}
    env.update(PYTHON=str(fake_python), HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", str(REPO / f"{name}.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "command").read_text().splitlines()[0] == str(REPO / f"{name}.py")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_launcher_run_through_a_symlink_finds_its_script(name, tmp_path):
    # a link in another folder to a relative link to the launcher: dirname "$0" alone named the links' folder
    (tmp_path / "bin").mkdir()
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / f"{name}.sh").symlink_to(REPO / f"{name}.sh")
    (tmp_path / "bin" / name).symlink_to(Path("..") / "links" / f"{name}.sh")
    shown = subprocess.run(["bash", "bin/" + name, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout.startswith(f"usage: {name}.py")


def test_gpu_checks_refuses_a_missing_teacher_input_before_the_tests_run(tmp_path):
    # on a lent GPU machine ../shared is not there: the teacher check failed only after the whole suite
    (tmp_path / "bin").mkdir()
    fake_nvidia_smi = tmp_path / "bin" / "nvidia-smi"
    fake_nvidia_smi.write_text("#!/bin/sh\necho 'GPU 0: a GPU (UUID: GPU-0)'\n")
    fake_nvidia_smi.chmod(0o755)
    missing = tmp_path / "missing.jsonl"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "TEACHER_DATA": str(missing),
           "RESULTS_DIR": str(tmp_path / "results")}
    done = subprocess.run(["bash", str(REPO / "bench/gpu_checks.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (f"gpu_checks.sh: {missing} (TEACHER_DATA or TOKENIZER_FROM) does not exist; set it, "
                           "or leave teacher out of CHECKS\n")
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(shutil.which("python", path="/usr/bin:/bin") is not None, reason="this system has a python command")
@pytest.mark.parametrize("name", SCRIPTS)
def test_a_launcher_runs_where_only_python3_is_installed(name, tmp_path):
    # Debian and Ubuntu without python-is-python3, Homebrew outside a virtual environment: no python command
    (tmp_path / "bin").mkdir()
    python3 = tmp_path / "bin" / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this environment's, under that name alone
    python3.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    env.pop("PYTHON", None)
    shown = subprocess.run(["bash", str(REPO / f"{name}.sh"), "--help"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert shown.stderr == "" and shown.returncode == 0
    assert shown.stdout.startswith(f"usage: {name}.py")


def test_every_loss_teacher_type_and_input_format_is_documented_where_users_look():
    from rerank_distill.formats import INPUT_FORMATS
    from rerank_distill.losses import LOSSES
    from rerank_distill.teachers import TEACHER_TYPES

    readme = (REPO / "README.md").read_text()
    places = {
        "train.py": (train.__doc__, LOSSES), "train.sh": ((REPO / "train.sh").read_text(), LOSSES),
        "generate_logits.py": (generate_logits.__doc__, TEACHER_TYPES),
        "generate_logits.sh": ((REPO / "generate_logits.sh").read_text(), TEACHER_TYPES),
        "README.md": (readme, [f"`{name}`" for name in [*LOSSES, *TEACHER_TYPES, *INPUT_FORMATS]]),
    }  # fmt: skip
    missing = {place: [name for name in names if name not in text] for place, (text, names) in places.items()}
    assert missing == dict.fromkeys(places, [])


def test_train_sh_passes_its_pairs_per_forward_to_the_losses_that_read_it():
    from rerank_distill.losses import LOSSES

    launcher = (REPO / "train.sh").read_text()
    listed = re.search(r'"\$loss" =~ \^\(([a-z_|]+)\)\$', launcher).group(1).split("|")
    listed += re.findall(r'"\$loss" == "([a-z_]+)" &&', launcher)  # (margin_mse: unless --no_fused_forward)
    assert sorted(listed) == sorted(name for name, spec in LOSSES.items() if spec.pairs_per_example)
