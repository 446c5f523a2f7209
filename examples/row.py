"""One row of an example's results table: run the example's evaluator (a module with a --model
and a --json flag that prints one JSON line) on a model folder and print the fields asked for.

    python -m examples.row examples.summarize_tldr.evaluate sft output/x/sft 49s rouge1:8.3f words:6.1f \
        [--name_width 9] [-- EXTRA EVALUATOR FLAGS]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("evaluator", help="module run as python -m EVALUATOR --model MODEL --json")
    p.add_argument("name", help="the row's label")
    p.add_argument("model", help="the model folder evaluated")
    p.add_argument("time", help="printed last, as given (e.g. 49s)")
    p.add_argument("fields", nargs="+", help="FIELD:FORMAT, e.g. rouge1:8.3f")
    p.add_argument("--name_width", type=int, default=12)
    p.add_argument("--time_width", type=int, default=7)
    a = p.parse_args(argv)
    out = subprocess.run([sys.executable, "-m", a.evaluator, "--model", a.model, "--json", *extra],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{a.evaluator} failed on {a.model}:\n{out.stderr.strip()}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cells = [format(result[f.split(":")[0]], f.split(":", 1)[1]) for f in a.fields]
    print(f"{a.name:<{a.name_width}} {' '.join(cells)} {a.time:>{a.time_width}}")


if __name__ == "__main__":
    main()
