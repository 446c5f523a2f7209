"""Every command the README, the docs/ pages and the examples' READMEs show runs as written: each
documented `python -m` / `deepspeed --module` entry point answers --help, each documented
`python FILE.py` does too when typed from the repository root, each `bash` script exists and
parses, the scripts table names commands, not bare files, and every page the README links exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
COMMAND = re.compile(r"^(?:python|deepspeed|bash)\s")


def documented_commands() -> list[tuple[str, str]]:
    """(doc file, command) for every command line in a fenced block and every inline `command`
    (a backslash-continued line joined to the next)."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        lines = []
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            lines += block.replace("\\\n", " ").splitlines()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        lines += [" ".join(c.split()) for c in re.findall(r"`([^`]+)`", prose)]
        out += [(doc.name, line.strip()) for line in lines if COMMAND.match(line.strip())]
    return out


STEPS = ("step1_sft", "step2_reward", "step2_dpo", "step3_rlhf")


def modules(commands) -> list[str]:
    """Every module a command runs; `training.<step>.main` stands for the four steps' mains."""
    found = set()
    for _, cmd in commands:
        for m in re.findall(r"(?:python -m|--module) ([A-Za-z_<>][\w.<>]*)(?=\s|$)", cmd):
            found.update(m.replace("<step>", s) for s in STEPS)
    return sorted(found)


def test_the_docs_show_commands_of_every_kind():
    commands = documented_commands()
    mods = modules(commands)
    # what the README's tables and walkthroughs name (a parse that found none would pass vacuously)
    for m in ("training.step3_rlhf.main", "training.step2_reward.rw_eval", "training.step1_sft.prompt_eval",
              "utils.plot", "scripts.bench.esrl"):
        assert m in mods, m
    assert any(c.startswith("bash scripts/demo.sh") for _, c in commands)


def test_every_documented_module_answers_help():
    """One interpreter runs each module as `python -m` would (runpy, cwd on sys.path), with --help."""
    mods = modules(documented_commands())
    code = (
        "import runpy, sys\n"
        "bad = []\n"
        "for m in sys.argv[1:]:\n"
        "    sys.argv = [m, '--help']\n"
        "    try:\n"
        "        runpy.run_module(m, run_name='__main__', alter_sys=True)\n"
        "        bad.append(m + ': no exit')\n"
        "    except SystemExit as e:\n"
        "        if e.code not in (0, None):\n"
        "            bad.append(f'{m}: exit {e.code}')\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('BAD', bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *mods], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_documented_files_run_as_typed_and_scripts_parse():
    commands = documented_commands()
    for doc, cmd in commands:
        first = cmd.split()
        if first[0] == "python" and len(first) > 1 and first[1].endswith(".py"):
            done = subprocess.run([sys.executable, first[1], "--help"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"{doc}: `{cmd}`: {done.stderr[-2000:]}"
        if first[0] == "bash" and len(first) > 1:
            script = ROOT / first[1]
            assert script.is_file(), f"{doc}: `{cmd}`: no {first[1]}"
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"{doc}: {first[1]} does not parse"


def test_the_scripts_table_names_commands_not_bare_files():
    """A bare `path/to/file.py` in the first column reads as `python path/to/file.py`, which a module
    of this package cannot run (its imports need the repository on sys.path)."""
    table = (ROOT / "docs" / "scripts.md").read_text(encoding="utf-8")
    first = [row.split("|")[1].strip() for row in table.splitlines() if row.startswith("| `")]
    assert len(first) > 10 and not [c for c in first if re.fullmatch(r"`[\w/.-]+\.py`", c)]


def test_every_linked_page_exists():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
