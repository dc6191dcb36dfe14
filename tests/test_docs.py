"""The README and docs/ pages: links resolve, shell commands name files and subcommands that exist, the README
stays a short front door, and the README's Python example runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_WORDS = 1200
MIN_DOCS_PAGES = 4

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
#: Executables a docs command may start with besides the checked ones: installed tools, not project files.
ALLOWED_EXECUTABLES = {"pip", "tensorboard"}
#: Modules a docs command may run with ``python -m``.
ALLOWED_MODULES = {"pip", "pytest"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's ``-1``, ``-2`` suffixes for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name} (has {sorted(anchors(path))})")
    assert not broken, f"broken links in {page.name}:\n" + "\n".join(broken)


def shell_commands(body: str, language: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuation lines joined, comments dropped, a console
    block's ``$`` lines only, ``&&`` and ``;`` chains split."""
    lines = body.replace("\\\n", " ").splitlines()
    if language == "console":
        lines = [line.strip()[2:] for line in lines if line.strip().startswith("$ ")]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "||"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def option_value(words: list[str], option: str) -> str | None:
    for k, word in enumerate(words):
        if word == option and k + 1 < len(words):
            return words[k + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def cli_subcommands() -> set[str]:
    from lyra_rl.cli import make_parser

    parser = make_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(subparsers.choices)


def installed(executable: str) -> bool:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(executable, path=search) is not None


def command_problems(words: list[str]) -> list[str]:
    """What in one documented command does not exist in this checkout (an empty list when all does)."""
    executable, args = Path(words[0]).name, words[1:]
    problems = []

    def need_file(path: str | None, what: str) -> None:
        if path is not None and not (ROOT / path).is_file():
            problems.append(f"{what} {path} does not exist")

    if executable == "bash":
        need_file(args[0] if args else None, "script")
    elif executable in ("python", "python3"):
        if args[:1] == ["-m"]:
            if args[1] not in ALLOWED_MODULES:
                problems.append(f"python -m {args[1]} is not an allowed module ({sorted(ALLOWED_MODULES)})")
        else:
            need_file(args[0] if args else None, "script")
            need_file(option_value(args, "--config"), "config")
    elif executable == "accelerate":
        if args[:1] != ["launch"]:
            problems.append(f"accelerate {args[:1]}: only 'accelerate launch' is documented")
        scripts = [a for a in args if a.endswith(".py")]
        if not scripts:
            problems.append("accelerate launch without a script")
        need_file(scripts[0] if scripts else None, "script")
        need_file(option_value(args, "--config_file"), "accelerate config")
        need_file(option_value(args, "--config"), "config")
    elif executable == "lyra-rl":
        if not args or args[0] not in cli_subcommands():
            problems.append(f"lyra-rl {args[:1]}: not a subcommand of lyra_rl/cli.py ({sorted(cli_subcommands())})")
    elif executable in ALLOWED_EXECUTABLES:
        if not installed(executable):
            problems.append(f"{executable} is not installed")
    else:
        problems.append(f"{executable}: not a known command (ALLOWED_EXECUTABLES lists the installed tools)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shell_command_exists(page):
    problems = []
    for language, body in code_blocks(page.read_text()):
        if language in SHELL_LANGUAGES:
            for words in shell_commands(body, language):
                problems += [f"`{shlex.join(words)}`: {p}" for p in command_problems(words)]
    assert not problems, f"commands in {page.name} that do not exist:\n" + "\n".join(problems)


def test_the_command_checks_catch_what_they_should():
    assert command_problems(["bash", "scripts/train.sh"]) == []
    assert command_problems(["bash", "scripts/nope.sh"])
    assert command_problems(["python", "recipes/grpo.py", "--config", "recipes/configs/nope.yaml"])
    assert command_problems(["accelerate", "launch", "--config_file", "nope.yaml", "recipes/grpo.py"])
    assert command_problems(["lyra-rl", "no-such-subcommand"])
    assert command_problems([".venv/bin/lyra-rl", "score", "x.mp4"]) == []
    assert command_problems(["rm", "-rf", "/"])
    assert shell_commands("a \\\n  b  # c\n$ d", "bash") == [["a", "b"], ["$", "d"]]
    console = shell_commands("text\n$ bash x.sh && pip install y", "console")
    assert console == [["bash", "x.sh"], ["pip", "install", "y"]]
    assert github_slug("The Wan2.1-1.3B config") == "the-wan21-13b-config"
    assert github_slug("`lyra-rl score` and *more*") == "lyra-rl-score-and-more"


def test_readme_is_a_short_front_door_to_the_docs():
    text = README.read_text()
    words = len(text.split())
    assert words < MAX_README_WORDS, f"README.md has {words} words; keep it under {MAX_README_WORDS} (detail: docs/)"
    pages = {Path(t.partition("#")[0]).name for t in relative_links(README) if re.match(r"^docs/[^/#]+\.md", t)}
    assert len(pages) >= MIN_DOCS_PAGES, f"README.md links {sorted(pages)}: fewer than {MIN_DOCS_PAGES} docs pages"
    assert "bash scripts/train.sh" in text and "bash scripts/test.sh" in text


def readme_example() -> str:
    """The ```python block of the README's "Python example" section."""
    section = README.read_text().split("\n## Python example", 1)[1].split("\n## ", 1)[0]
    blocks = [body for language, body in code_blocks(section) if language == "python"]
    assert len(blocks) == 1, "the README's 'Python example' section should hold exactly one ```python block"
    return blocks[0]


def test_readme_python_example_runs(tmp_path):
    """The README's Python example, run as written in a fresh process (cwd: a temporary folder, so its
    ``outputs/example`` lands there): it scores a rendered video and trains two GRPO steps on the tiny policy."""
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"the README's Python example failed:\n{result.stderr[-4000:]}"
    assert (tmp_path / "outputs" / "example" / "checkpoint-2").is_dir()
