"""Every relative link in README.md, docs/ and examples/README.md points to a file that exists,
and every ``#anchor`` to a heading of that page (GitHub's slug rules)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)

# Pages that other work in flight will add. A link to one of them may dangle until it lands;
# empty this set once they are all on main (the test below then holds every link to account).
_PLANNED: frozenset[str] = frozenset()


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def _prose(text: str) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a linked heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(page: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in _PLANNED:
                broken.append(f"{target}: no such file {rel}")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_slug_rules() -> None:
    assert _slug("The `register_buffer` trap: `tk.audit`") == "the-register_buffer-trap-tkaudit"
    assert _slug("From the TensorRT tutorial") == "from-the-tensorrt-tutorial"
    assert _slug("保存和加载整个模型") == "保存和加载整个模型"
    assert _links_from("see [a](a.md) and `[b](b.md)` and [c](https://x.y) and [d](#top)") == ["a.md", "#top"]


def _links_from(text: str) -> list[str]:
    return [t for t in _LINK.findall(_prose(text)) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


_CODE = re.compile(r"(<!--\s*(?:skip:[^>]*|file:\s*[\w.]+|new-process)\s*-->\s*\n)?```python\n(.*?)```", re.DOTALL)


def _translations() -> list[Path]:
    return sorted((ROOT / "docs" / "zh").rglob("*.md"))


def _original(translation: Path) -> Path:
    rel = translation.relative_to(ROOT / "docs" / "zh")
    return ROOT / rel if rel == Path("README.md") else ROOT / "docs" / rel


@pytest.mark.parametrize("page", _translations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_translation_keeps_the_code_of_its_original(page: Path) -> None:
    # A translated page runs the same code as the English one: when the English code changes,
    # this fails until the translation follows.
    original = _original(page)
    assert original.is_file(), f"{page.relative_to(ROOT)} translates {original.relative_to(ROOT)}, which does not exist"

    def code(p: Path) -> list[tuple[str, str]]:
        # A skip reason may be translated; a file name or a new-process marker must match exactly.
        return [
            (re.sub(r"^<!--\s*(skip):.*$", r"\1", (m.group(1) or "").strip(), flags=re.DOTALL), m.group(2))
            for m in _CODE.finditer(p.read_text(encoding="utf-8"))
        ]

    assert code(page) == code(original), (
        f"{page.relative_to(ROOT)}: its python blocks (or skip markers) differ from "
        f"{original.relative_to(ROOT)}; copy the English blocks verbatim"
    )
