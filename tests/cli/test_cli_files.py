"""`torchkeep inspect` and `torchkeep verify`: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    tk.save({"model": {"w": torch.randn(8, 4), "b": torch.zeros(8)}, "step": 3}, good, metadata={"run": "r1"})
    other = tmp_path / "other.safetensors"
    tk.save([torch.ones(2)], other)
    raw = bytearray(good.read_bytes())
    raw[-5] ^= 0xFF  # a flipped byte in the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    return {"good": good, "other": other, "bad": bad, "junk": junk, "missing": tmp_path / "missing.safetensors"}


def test_inspect_shows_tensors_and_metadata(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, _ = _run(capsys, "inspect", str(files["good"]))
    assert code == 0
    assert "torchkeep file" in out and "2 tensors" in out
    assert "model/w" in out and "float32" in out and "(8, 4)" in out
    assert '"run": "r1"' in out
    # The values, from the header; a state dict is one line there (its tensors are in the table).
    assert '"step": 3' in out and '"model": "<2 tensors: listed below>"' in out
    assert out.count("model/w") == 1


def test_inspect_json(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, _ = _run(capsys, "inspect", str(files["good"]), "--json", "--verify")
    assert code == 0
    desc = json.loads(out)
    assert desc["format"] == "torchkeep" and desc["verified"] is True
    assert {t["name"]: t["shape"] for t in desc["tensors"]} == {"model/w": [8, 4], "model/b": [8]}
    assert all(len(t["xxh3"]) == 16 and t["device"] == "cpu" for t in desc["tensors"])
    assert desc["metadata"] == {"run": "r1"} and desc["tensor_bytes"] == 8 * 4 * 4 + 8 * 4
    assert desc["tree"] == {
        "model": {"w": "<tensor model/w float32 (8, 4)>", "b": "<tensor model/b float32 (8,)>"},
        "step": 3,
    }


def test_inspect_bad_file_prints_one_line(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, err = _run(capsys, "inspect", str(files["junk"]))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "torchkeep convert" in err and "Traceback" not in err


def test_verify_all_good(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, err = _run(capsys, "verify", str(files["good"]), str(files["other"]))
    assert code == 0 and err == ""
    assert out.count("ok ") == 2


def test_verify_reports_each_bad_file_on_one_line(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    args = [str(files[k]) for k in ("good", "bad", "junk", "missing")]
    code, out, err = _run(capsys, "verify", *args)
    assert code == 1
    assert out.count("ok ") == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3, lines
    assert str(files["bad"]) in lines[0] and "checksum mismatch" in lines[0] and "model/" in lines[0]
    assert str(files["junk"]) in lines[1]
    assert str(files["missing"]) in lines[2] and "no such file" in lines[2]


def test_verify_json(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, _ = _run(capsys, "verify", "--json", str(files["good"]), str(files["bad"]))
    assert code == 1
    results = json.loads(out)
    assert [r["ok"] for r in results] == [True, False]
    assert "checksum mismatch" in results[1]["error"]


def test_verify_says_when_a_file_has_no_checksums(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(2)}, str(plain))
    # Nothing in it can be verified: that is not "ok" unless asked (issue 18, item 15).
    code, _, err = _run(capsys, "verify", str(plain))
    assert code == 1 and "carry no checksum" in err
    code, out, _ = _run(capsys, "verify", str(plain), "--allow-unverified")
    assert code == 0 and "no checksum: accepted" in out


@pytest.mark.slow
def test_real_process_exit_codes_and_no_traceback(files: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "torchkeep", "verify", str(files["good"]), str(files["bad"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "checksum mismatch" in proc.stderr and "ok" in proc.stdout
