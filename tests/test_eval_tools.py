"""The evaluation entry points keep non-ASCII prompts intact and read typed \\n as a newline."""
from types import SimpleNamespace

from training.step1_sft.prompt_eval import read_prompts


def test_prompt_eval_keeps_non_ascii_and_reads_typed_newlines(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("Traduis: café crème\\nAssistant: \n", encoding="utf-8")
    args = SimpleNamespace(prompts=["User: naïve résumé\\nAssistant: "], prompt_file=str(f))
    assert read_prompts(args) == ["User: naïve résumé\nAssistant: ", "Traduis: café crème\nAssistant: "]
