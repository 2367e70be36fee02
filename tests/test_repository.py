"""The repository stands alone: no file points at documents outside it."""

from __future__ import annotations

from paylayer.settings import REPO_ROOT

# Spelled in pieces, so this file does not match itself.
OUTSIDE = ("../" + "shared", "SPEC" + ".md")
SKIPPED = {".venv", ".git", "build", "node_modules", ".paylayer", ".hypothesis"}


def test_no_file_refers_outside_the_repository() -> None:
    offenders = []
    for path in REPO_ROOT.rglob("*"):
        parts = set(path.relative_to(REPO_ROOT).parts)
        if parts & SKIPPED or any(p.endswith("_cache") for p in parts) or not path.is_file():
            continue
        if path.suffix not in (".py", ".md", ".proto", ".yaml", ".yml", ".toml", ".txt", ""):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(REPO_ROOT)}: {o}" for o in OUTSIDE if o in text]
    assert offenders == []
