"""Uploads send the Content-Type an input's content calls for, not its file name's."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.runhelpers import only_run_dir, read_journal, run_cli


def test_a_phone_mpo_is_uploaded_as_a_jpeg(isolated: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = isolated / "p"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 90, 30)).save(
        buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (320, 240))])
    (folder / "phone.MPO").write_bytes(buffer.getvalue())
    path = folder / "mpo.yaml"
    path.write_text("version: 1\nname: mpo\ninputs: {hero: phone.MPO}\nsteps:\n"
                    "  - {id: a, kind: frames, model_name: kling-v3-0, duration: 3, "
                    "image: '${inputs.hero}'}\n", encoding="utf-8")
    code, _, err = run_cli(["run", str(path), "--sim", "--sim-speed", "10",
                            "--out", str(isolated / "runs")], capsys)
    assert code == 0, err
    journal = read_journal(only_run_dir(isolated / "runs", "mpo"))
    [upload] = [e for e in journal if e["event"] == "uploaded"]
    assert upload["url"].endswith(".jpg")  # the simulator names an asset by its type
