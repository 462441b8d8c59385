#!/usr/bin/env bash
# Put a competition's files in input/<competition>/, from the first source that has them:
# the Kaggle CLI (when credentials exist), $COMPETITION_DATA, ../shared/data/<competition>.
# Usage: scripts/get_data.sh <competition> <destination folder>
set -euo pipefail
comp=$1
dest=$2

if compgen -G "$dest/*.csv" >/dev/null; then
  exit 0  # already in place
fi
mkdir -p "$dest"

kaggle_cli=$(command -v kaggle || true)
[ -z "$kaggle_cli" ] && [ -x .venv/bin/kaggle ] && kaggle_cli=.venv/bin/kaggle
if [ -n "$kaggle_cli" ] && { [ -f "$HOME/.kaggle/kaggle.json" ] || [ -n "${KAGGLE_USERNAME:-}" ]; }; then
  echo "downloading $comp with the Kaggle CLI into $dest"
  "$kaggle_cli" competitions download -c "$comp" -p "$dest"
  python3 -m zipfile -e "$dest/$comp.zip" "$dest" && rm "$dest/$comp.zip"
  exit 0
fi

for src in "${COMPETITION_DATA:-}" "../shared/data/$comp"; do
  if [ -n "$src" ] && compgen -G "$src/*.csv" >/dev/null; then
    cp "$src"/*.csv "$dest"/
    echo "copied $comp data from $src into $dest"
    exit 0
  fi
done

cat >&2 <<MSG
The $comp data is not in $dest. Get it one of these ways, then run the command again:
  - Kaggle CLI: pip install kaggle, put your API token in ~/.kaggle/kaggle.json, accept the competition
    rules on its Kaggle page; set-up then downloads it.
  - A local copy: COMPETITION_DATA=/path/to/folder/with/the/csv/files make setup
  - By hand: unzip the files from https://www.kaggle.com/competitions/$comp/data into $dest/
MSG
exit 1
