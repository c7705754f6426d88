"""The README's "What is supported" block, generated from the registries.

``python docs/supported_table.py`` prints the block; ``--write`` replaces it in README.md between the
``<!-- supported -->`` markers. ``tests/test_readme.py`` fails when the README's block differs from what this prints,
so a recipe, family, threat, suite, dataset, backbone or preset added to a registry must be added here by re-running
``--write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- supported -->", "<!-- /supported -->"
WIDTH = 120


def _registries() -> list[tuple[str, str, list[str]]]:
    from rome_bench.data import DATASETS
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.models import FAMILIES, MODELS
    from rome_bench.presets import PRESETS
    from rome_bench.threats import THREATS
    from rome_bench.training import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
    from rome_bench.training.recipe import RECIPES

    def threats(tag: str) -> list[str]:
        return [entry.name for entry in THREATS.entries() if entry.metadata.get("tag") == tag]

    return [
        ("Recipes", "docs/training.md", RECIPES.names()),
        ("Model families", "docs/families.md", FAMILIES.names()),
        ("Threats, seen (ℓp)", "docs/evaluation.md", threats("seen")),
        ("Threats, unseen", "docs/threats.md", threats("unseen")),
        ("Suites", "docs/evaluation.md", SUITES.names()),
        ("Datasets", "docs/presets.md#data", DATASETS.names()),
        ("Backbones", "docs/families.md#backbones", MODELS.names()),
        ("Presets", "docs/presets.md", list(PRESETS)),
    ]


def _wrap(head: str, names: list[str]) -> list[str]:
    lines, line = [], head
    for i, name in enumerate(names):
        word = f"`{name}`" + ("," if i < len(names) - 1 else "")
        if len(line) + 1 + len(word) > WIDTH:
            lines.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}"
    return [*lines, line]


def block() -> str:
    """The generated lines between the markers (without the markers)."""
    lines = []
    for title, link, names in _registries():
        lines += _wrap(f"* **[{title}]({link})** ({len(names)}):", names)
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The lines between the markers in ``text``."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n")


def main() -> None:
    generated = block()
    if "--write" in sys.argv[1:]:
        text = README.read_text()
        start, end = text.index(START) + len(START), text.index(END)
        README.write_text(text[:start] + "\n" + generated + "\n" + text[end:])
    else:
        print(generated)


if __name__ == "__main__":
    main()
