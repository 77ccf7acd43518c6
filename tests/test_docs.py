"""The documents stay true to the code: the README's line links land on what they name, every "METHOD.md §N" the
code cites is a section of METHOD.md, every docs/ link and anchor the code and docs use exists, and nothing refers
to a place a clone of the repository does not have."""
import glob
import os
import re

from conftest import ROOT
from test_cli import model_dir  # noqa: F401  (fixture: the tiny checkpoint and a real tokenizer)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def files(*patterns):
    return sorted({os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat))})


def anchors(md):  # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", md, re.M)}


def test_readme_line_links_land_on_their_definitions():
    links = re.findall(r"\[`([\w.]+)`\]\((\w+\.py)#L(\d+)\)", read("README.md"))
    assert len(links) >= 6
    for name, path, line in links:
        text = read(path).splitlines()[int(line) - 1]
        assert re.match(rf"\s*(class|def) {name.split('.')[-1]}\b", text), (name, path, line, text)


def test_method_sections_cited_exist():
    sections = set(re.findall(r"^## (\d+)\. ", read("METHOD.md"), re.M))
    cited = {n for path in files("*.py", "*.md", "docs/*.md", "tests/*.py")
             for ref in re.findall(r"METHOD\.md §([\d§\-]+)", read(path)) for n in re.findall(r"\d+", ref)}
    assert cited and cited <= sections, cited - sections


def test_doc_links_and_anchors_exist():
    for path in files("*.py", "*.md", "docs/*.md"):
        for target, anchor in re.findall(r"(docs/[\w-]+\.md)(?:#([\w-]+))?", read(path)):
            assert os.path.exists(os.path.join(ROOT, target)), (path, target)
            assert not anchor or anchor in anchors(read(target)), (path, target, anchor)


def test_nothing_refers_outside_the_repository():
    for path in files("*.py", "*.md", "docs/*.md", "tests/*.py", "tests/data/*"):
        if path != os.path.join("tests", "test_docs.py"):
            assert not re.search(r"\.{2}/shared|shared[/]spec|spec §", read(path)), path


def test_readme_library_example_runs(model_dir, monkeypatch, capsys):  # noqa: F811
    """The README's library example as written, on the tiny checkpoint, 4 tokens."""
    code = re.search(r"## As a library\n\n```python\n(.*?)```", read("README.md"), re.S).group(1)
    code = code.replace('cli.resolve_model("Qwen/Qwen2.5-VL-7B-Instruct")', repr(model_dir))
    code = code.replace('R.Settings(mode="vreason")', 'R.Settings(mode="vreason", max_new_tokens=4)')
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].endswith("2 updates")
