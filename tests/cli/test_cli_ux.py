"""The CLI as a new user (and a hostile file) meets it: issue 18, items 4, 13, 15, 16, 17, 20."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchkeep as tk
from torchkeep.cli import app, main

ROOT = Path(__file__).resolve().parents[2]

# An ANSI "clear screen + set window title" sequence, rich markup and a lone surrogate.
ANSI = "\x1b[2J\x1b]0;pwned\x07"
MARKUP = "[red]alarm[/red]"
SURROGATE = "\ud800"
HOSTILE = f"w{ANSI}{MARKUP}{SURROGATE}\x9b"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and SURROGATE not in text
    assert "\\x1b" in text  # shown, escaped, so the user sees something odd is in the file


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ------------------------------------------------------------------------------------------
# item 4: what comes from a file is escaped


def _save_hostile(obj: object, path: Path, **kwargs: object) -> None:
    # tk.save refuses a lone surrogate (not UTF-8), but a crafted header can hold one as the JSON
    # escape \ud800: write a six-letter placeholder, then swap in the six-byte escape.
    tk.save(obj, path, **kwargs)  # type: ignore[arg-type]
    path.write_bytes(path.read_bytes().replace(b"QQQQQQ", b"\\ud800"))


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    name = HOSTILE.replace(SURROGATE, "QQQQQQ")
    a = tmp_path / "a.safetensors"
    _save_hostile({name: torch.zeros(2), "ok": torch.ones(1), "meta": {name: 1}}, a, metadata={name: name})
    assert SURROGATE in tk.load(a)["meta"].popitem()[0]
    b = tmp_path / "b.safetensors"
    _save_hostile({name: torch.ones(2), "meta": {name: 2}}, b)
    run = tmp_path / "run"
    with tk.CheckpointManager(run, model=torch.nn.Linear(2, 2)) as mgr:
        mgr.save(step=1, metrics={HOSTILE.replace(SURROGATE, "QQQQQQ"): 0.5})
    for ckpt in run.glob("ckpt-*"):
        ckpt.write_bytes(ckpt.read_bytes().replace(b"QQQQQQ", b"\\ud800"))
    return {"a": a, "b": b, "run": run}


def test_inspect_escapes_names_from_the_file(capsys, hostile) -> None:
    code, out, _ = _run(capsys, "inspect", str(hostile["a"]))
    assert code == 0
    _assert_escaped(out)
    assert MARKUP in out  # markup is printed literally, not interpreted
    code, out, _ = _run(capsys, "inspect", str(hostile["a"]), "--json")
    assert code == 0
    assert "\x1b" not in out and "\x9b" not in out and SURROGATE not in out  # ASCII-only JSON
    assert HOSTILE.replace("/", "_") in {t["name"] for t in json.loads(out)["tensors"]}  # and still exact


def test_diff_escapes_names_from_the_file(capsys, hostile) -> None:
    code, out, _ = _run(capsys, "diff", str(hostile["a"]), str(hostile["b"]))
    assert code == 0
    _assert_escaped(out)
    assert MARKUP in out


def test_ls_escapes_metric_keys(capsys, hostile) -> None:
    code, out, _ = _run(capsys, "ls", str(hostile["run"]))
    assert code == 0
    _assert_escaped(out)
    assert MARKUP in out


def test_verify_escapes_paths_and_errors(capsys, tmp_path) -> None:
    # A file name with an escape sequence and a damaged file whose error quotes a tensor name.
    name = tmp_path / "x\x1b[31m.safetensors"
    tk.save({HOSTILE.replace(SURROGATE, ""): torch.ones(4)}, name)
    raw = bytearray(name.read_bytes())
    raw[-1] ^= 0xFF
    name.write_bytes(bytes(raw))
    code, out, err = _run(capsys, "verify", str(name))
    assert code == 1
    _assert_escaped(out + err)


# ------------------------------------------------------------------------------------------
# item 15: no checksums is not "ok"


def test_verify_refuses_files_without_checksums_unless_allowed(capsys, tmp_path) -> None:
    st = pytest.importorskip("safetensors.torch")
    plain = tmp_path / "plain.safetensors"
    st.save_file({"w": torch.ones(3)}, str(plain))
    good = tmp_path / "good.safetensors"
    tk.save({"w": torch.ones(3)}, good)
    code, out, err = _run(capsys, "verify", str(good), str(plain))
    assert code == 1
    assert "ok   " + str(good) in out
    assert "UNVERIFIED" in err and "--allow-unverified" in err and str(plain) in err
    code, out, err = _run(capsys, "verify", str(good), str(plain), "--allow-unverified")
    assert code == 0 and "1 with no checksum: accepted" in out
    code, out, _ = _run(capsys, "verify", str(plain), "--json")
    assert code == 1 and json.loads(out)[0]["unverified"] == 1


# ------------------------------------------------------------------------------------------
# item 16: off a terminal, tables are plain and never cut a name


def test_tables_never_cut_names_off_a_terminal(capsys, tmp_path) -> None:
    long = "encoder." + ".".join(f"layer{i}" for i in range(40)) + ".weight"
    path = tmp_path / "long.safetensors"
    tk.save({long: torch.ones(1), "b": torch.zeros(1)}, path)
    code, out, _ = _run(capsys, "inspect", str(path))
    assert code == 0
    assert long in out and "…" not in out
    assert "\x1b[" not in out  # no colour codes in a pipe
    assert "┃" not in out and "│" not in out  # plain text, not box drawing
    row = next(line for line in out.splitlines() if line.startswith(long))
    assert row.split()[1:3] == ["float32", "(1,)"]


def test_ls_in_a_pipe_prints_one_line_per_checkpoint(capsys, tmp_path) -> None:
    run = tmp_path / ("a-rather-long-directory-name-" * 4)
    with tk.CheckpointManager(run, model=torch.nn.Linear(2, 2)) as mgr:
        for step in (1, 2):
            mgr.save(step=step, metrics={"validation_loss_with_a_long_name": step / 10, "accuracy_top_5": 0.9})
    code, out, _ = _run(capsys, "ls", str(run))
    assert code == 0
    rows = [line for line in out.splitlines() if line[:1].isdigit() and "KiB" in line]
    assert len(rows) == 2 and all("validation_loss_with_a_long_name=" in r and "accuracy_top_5=0.9" in r for r in rows)
    assert f"in {run}" in out


# ------------------------------------------------------------------------------------------
# item 17: ls --verify prints the path once, unwrapped; inspect; serve's banner


def test_ls_verify_names_a_corrupt_checkpoint_once(capsys, tmp_path) -> None:
    with tk.CheckpointManager(tmp_path, model=torch.nn.Linear(2, 2)) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
        newest = Path(mgr.latest.path)  # type: ignore[union-attr, arg-type]
    raw = bytearray(newest.read_bytes())
    raw[-3] ^= 0xFF
    newest.write_bytes(bytes(raw))
    code, out, _ = _run(capsys, "ls", str(tmp_path), "--verify")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(newest.name + ":"))
    assert "checksum mismatch" in line and str(newest) not in line  # the name once, not name + path
    assert out.count(newest.name) == 1


def test_inspect_checkpoint_lists_each_tensor_once_and_shows_model_arguments(capsys, tmp_path) -> None:
    @tk.register(name="ux-inspect-mlp")
    class MLP(torch.nn.Module):
        def __init__(self, hidden: int = 4, act: str = "relu") -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, hidden)

    model = MLP(hidden=5)
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=2)
    code, out, _ = _run(capsys, "inspect", str(path))
    assert code == 0
    assert out.count("model/fc.weight") == 1  # in the tensor table only, not again in the values
    assert "arguments: hidden=5" in out and 'act="relu"' in out
    assert "<RNG state:" in out and "__rng__/python" not in out
    code, out, _ = _run(capsys, "inspect", str(path), "--json")
    assert json.loads(out)["model_arguments"] == {"hidden": 5, "act": "relu"}


def test_inspect_torch_save_file_says_convert_first(capsys, tmp_path) -> None:
    pth = tmp_path / "model.pth"
    torch.save({"w": torch.ones(1)}, pth)
    code, _, err = _run(capsys, "inspect", str(pth))
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith(f"error: {pth}: this is a torch.save file")
    assert f"torchkeep convert {pth} {tmp_path / 'model'}.safetensors" in first
    with pytest.raises(tk.CorruptCheckpointError, match=r"model\.pth: this is a torch\.save\(\) file"):
        tk.load(pth)  # the library says the same, first


def test_serve_banner_only_after_the_model_loaded(capsys, tmp_path) -> None:
    pytest.importorskip("uvicorn")
    code, out, err = _run(capsys, "serve", str(tmp_path / "missing.safetensors"), "--port", "1")
    assert code == 1
    assert "http://" not in out + err and "error:" in err  # no "serving on http://..." for a model that never loaded


# ------------------------------------------------------------------------------------------
# item 20: conventions


def _commands() -> list[str]:
    import typer

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_version_and_short_help() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"torchkeep {tk.__version__}"
    for command in _commands():
        result = runner.invoke(app, [command, "-h"], terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output


def test_help_placeholders_are_readable() -> None:
    runner = CliRunner()
    for command in ["", *_commands()]:
        result = runner.invoke(app, [command, "--help"] if command else ["--help"], terminal_width=200)
        for tag in ("<bool>", "<list[", "<path>", "<str>", "<int>", "<float>"):
            assert tag not in result.output, (command, tag)
    export = runner.invoke(app, ["export", "--help"], terminal_width=200).output
    assert "DIR" in export and "SHAPE" in export and "MODULE" in export


def test_each_short_flag_means_one_thing_across_commands() -> None:
    import typer

    meaning: dict[str, set[str]] = {}
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            shorts = [o for o in getattr(param, "opts", []) if o.startswith("-") and not o.startswith("--")]
            longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            for s in shorts:
                meaning.setdefault(s, set()).add(longs[0] if longs else name)
    assert {s: m for s, m in meaning.items() if len(m) > 1} == {}
    assert meaning["-o"] == {"--output-dir"}


def test_ls_storage_option_is_spelled_out(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "ls", str(tmp_path), "--storage-option", "novalue")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = _run(capsys, "ls", str(tmp_path), "-o", "a=b")
    assert code == 2  # -o is an output directory elsewhere; ls does not take it


# ------------------------------------------------------------------------------------------
# item 13: advice the CLI can follow; bench and serve take --import


MODELS = textwrap.dedent(
    """
    import torch
    import torchkeep as tk


    @tk.register(name="ux-cli-mlp")
    class MLP(torch.nn.Module):
        def __init__(self, hidden: int = 8):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x)
    """
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS, encoding="utf-8")
    subprocess.run(
        [sys.executable, "-c", "import models, torchkeep as tk; tk.save_model(models.MLP(), 'mlp.safetensors')"],
        cwd=tmp_path,
        env=_env(),
        check=True,
    )
    return tmp_path


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchkeep", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_cli_advice_names_the_import_flag(model_dir: Path) -> None:
    proc = _cli(model_dir, "audit", "mlp.safetensors")
    assert proc.returncode == 1
    assert "--import models" in proc.stderr and "import_module=True" not in proc.stderr
    proc = _cli(model_dir, "audit", "mlp.safetensors", "--import", "models")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_bench_times_the_eager_model_with_import(model_dir: Path) -> None:
    args = ["bench", "mlp.safetensors", "--input-shape", "1,4", "-b", "2", "--min-time", "0.01", "--max-iters", "3"]
    proc = _cli(model_dir, *args)
    assert proc.returncode == 1 and "--import models" in proc.stderr
    proc = _cli(model_dir, *args, "--import", "models", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["backend"] for r in results] == ["eager"] and results[0]["error"] is None


def test_serve_takes_import(capsys) -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert "--import" in result.output and "MODULE" in result.output


def test_on_a_terminal_tables_fold_and_progress_draws() -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    from torchkeep.cli._output import print_table, progress

    long = "decoder." + "x" * 150 + ".weight"
    table = Table("tensor", "size")
    table.add_row(long, "4 B")
    out = io.StringIO()
    print_table(Console(file=out, force_terminal=True, width=60), table)
    assert "…" not in out.getvalue() and "x" * 40 in out.getvalue()  # folded over lines, not cut
    assert "".join(c for c in out.getvalue() if c == "x") == "x" * 150
    bar = io.StringIO()
    assert list(progress(range(3), total=3, label="verifying", console=Console(file=bar, force_terminal=True))) == [
        0,
        1,
        2,
    ]
    assert "verifying" in bar.getvalue()
    quiet = io.StringIO()
    assert list(progress(range(3), total=3, label="verifying", console=Console(file=quiet))) == [0, 1, 2]
    assert quiet.getvalue() == ""  # off a terminal: nothing
