"""The README's tour and its command lines work together, as written (issue 18, items 12 and 21).

The tour's python blocks are written out as the user would (``models.py`` + ``train.py``), run,
and then every ``torchkeep ...`` line of the README's shell blocks runs in the same directory —
``-m models`` included — except the server (it runs forever; tests/serve covers it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_PY = re.compile(r"(?:<!--\s*(file:\s*[\w.]+)\s*-->\s*\n)?```python\n(.*?)```", re.DOTALL)
_SH = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _tour_files(text: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for marker, code in _PY.findall(text.split("## Export, benchmark, serve")[0]):
        name = marker.removeprefix("file:").strip() if marker else "train.py"
        files[name] = code
    return files


def _cli_lines(text: str) -> list[str]:
    lines = []
    for block in _SH.findall(text):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith("torchkeep ") and not command.startswith("torchkeep serve"):
                lines.append(command)
    return lines


def test_tour_defines_the_model_in_an_importable_module() -> None:
    files = _tour_files(README.read_text(encoding="utf-8"))
    assert set(files) == {"models.py", "train.py"}
    assert "@tk.register" in files["models.py"] and "from models import" in files["train.py"]
    lines = _cli_lines(README.read_text(encoding="utf-8"))
    assert any(" -m models" in line for line in lines)  # the CLI imports the tour's module


@pytest.mark.slow
def test_readme_tour_then_its_cli_lines(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    text = README.read_text(encoding="utf-8")
    for name, code in _tour_files(text).items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "train.py"],  # no __main__ warning: the class is in models.py
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # The legacy file the convert line stands for: a tutorial's torch.save of a state dict.
    subprocess.run(
        [sys.executable, "-c", "import torch, models; torch.save(models.MLP().state_dict(), 'old_model.pth')"],
        cwd=tmp_path,
        env=_env(),
        check=True,
    )
    for line in _cli_lines(text):
        args = shlex.split(line)[1:]
        if args[0] == "bench":  # the line as written, timed briefly: this checks that it works, not how fast
            args += ["--min-time", "0.05", "--max-iters", "20", "--warmup", "2"]
        command = f"{shlex.quote(sys.executable)} -m torchkeep {' '.join(args)}"  # through a shell: globs expand
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if args[0] == "bench":  # -m models lets it time the eager model too (the ×eager reference)
            rows = [r for r in proc.stdout.splitlines() if r.split()[:1] in (["eager"], ["★"])]
            assert any("eager" in r for r in rows) and "failed" not in proc.stdout, proc.stdout
    assert (tmp_path / "export" / "export.json").is_file() and (tmp_path / "bench.png").is_file()


def test_readme_says_how_to_install_and_which_extra_each_command_needs() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install torchkeep" in text
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+) = \[", table, flags=re.MULTILINE))  # tomllib is 3.11+; we support 3.10
    named = set(re.findall(r"torchkeep\[(\w+)\]", text))
    assert named <= extras, f"the README names extras that do not exist: {named - extras}"
    assert {"onnx", "serve", "grpc", "ray", "s3", "bench", "tensorrt", "all"} <= named
    for command in ("ls", "inspect", "verify", "diff", "audit", "convert", "export", "bench", "serve"):
        assert re.search(rf"\| `{command}[ `]", text) or f"`{command}`" in text, command
