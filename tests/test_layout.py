"""The seams of the package (docs/layout.md), checked on its source: one owner for the run folder's layout, the
member kinds and Optuna's storage; whole configs only where the data flow starts."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "textreg"
# Handed a whole config: the fold loop, pretraining's own driver, and the config module itself.
WHOLE_CONFIG_ALLOWED = {("pipeline", "*"), ("pretraining", "run_pretraining"), ("config", "*")}


def sources() -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(PACKAGE.glob("*.py"))}


def code_lines(source: str) -> list[str]:
    """The source without docstrings and comments: what runs."""
    tree = ast.parse(source)
    docstrings = {
        node.body[0].value.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    }
    spans = {
        line
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and node.value.lineno in docstrings
        for line in range(node.lineno, node.end_lineno + 1)
    }
    return [line.split("#")[0] for n, line in enumerate(source.splitlines(), 1) if n not in spans]


def modules_where(pattern: str) -> list[str]:
    return sorted(name for name, source in sources().items() if re.search(pattern, "\n".join(code_lines(source))))


def test_only_the_run_folder_builds_a_fold_folder_name_or_reads_metrics_json():
    assert modules_where(r'f"fold\{') == ["artifacts"]
    assert modules_where(r'"metrics\.json"') == ["artifacts"]


def test_only_the_registry_resolves_a_member_kind():
    # the config validates the name against the registry; the fold loop and prediction ask it for the class
    assert modules_where(r"\bkind\s*[!=]=|\.kind\s+in\b|\bin\s+\(?\s*\"(transformer|tfidf_ridge)\"") == []
    assert modules_where(r"member_class\(") == ["inference", "members", "pipeline"]


def test_no_function_below_the_pipeline_takes_a_whole_config():
    offenders = []
    for name, source in sources().items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (name, "*") in WHOLE_CONFIG_ALLOWED or (name, node.name) in WHOLE_CONFIG_ALLOWED:
                continue
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            annotations = [ast.unparse(a.annotation) for a in arguments if a.annotation is not None]
            if any(re.search(r"\b(Config|PretrainConfig)\b", text) for text in annotations):
                offenders.append(f"{name}.{node.name}")
    assert offenders == []


@pytest.mark.parametrize("private", [r"optuna\.\w+\._", r"from optuna[\w.]*\._", r"\._storage\b", r"\._trial_id\b"])
def test_optuna_is_used_through_its_public_api_only(private):
    assert modules_where(private) == []
