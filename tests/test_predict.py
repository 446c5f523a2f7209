"""utils.predict: prompt file reading, answers equal to a direct generate, RNG and mode untouched."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import write_jsonl
from utils.config import ConfigError
from utils.data.encoding import encode_prompts
from utils.generation import cut_at_eos
from utils.predict import (PredictArgs, load_predict_prompts, make_predict_hook, predict_path,
                           write_predictions)

ROWS = [
    {"instruction": "User: Repeat after me: lime rose fox\nAssistant: ", "input": "", "output": "lime rose fox"},
    {"instruction": "User: Repeat after me: {input}\nAssistant: ", "input": "red plum", "output": "red plum"},
    {"instruction": "User: hi\nAssistant: "},
    {"instruction": "User: Repeat after me: ant pig red\nAssistant: ", "output": "ant pig"},
    {"instruction": "User: say cat\nAssistant: ", "output": "cat",
     "history": [["User: say dog\nAssistant: ", "dog"]]},
]
PROMPTS = ["User: Repeat after me: lime rose fox\nAssistant: ", "User: Repeat after me: red plum\nAssistant: ",
           "User: hi\nAssistant: ", "User: Repeat after me: ant pig red\nAssistant: ",
           "User: say dog\nAssistant: dog\nUser: say cat\nAssistant: "]


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir)


@pytest.fixture()
def predict_file(tmp_path):
    return write_jsonl(tmp_path / "predict.jsonl", ROWS)


def direct_greedy(model, tokenizer, ids: list[int], n: int) -> str:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(cut_at_eos(out[:, len(ids):], tokenizer.eos_token_id)[0], skip_special_tokens=True)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_greedy_answers_match_direct_generate(model, tokenizer, predict_file, tmp_path):
    prompts = load_predict_prompts(str(predict_file), tokenizer, 64)
    assert [p.prompt for p in prompts] == PROMPTS
    assert [p.prompt_ids for p in prompts] == encode_prompts(tokenizer, PROMPTS)
    expected = [direct_greedy(model, tokenizer, p.prompt_ids, 8) for p in prompts]
    for bs in (1, 3):  # batch 3: left-padded batches, the last one short
        out = predict_path(tmp_path / "run", 0, 5)
        rows = write_predictions(model, tokenizer, prompts, out, batch_size=bs, max_new_tokens=8, greedy=True)
        assert read_rows(out) == rows
        assert [r["prompt"] for r in rows] == PROMPTS
        assert [r["answer"] for r in rows] == expected
        assert [r.get("reference") for r in rows] == ["lime rose fox", "red plum", None, "ant pig", "cat"]
    assert out == tmp_path / "run" / "predicts" / "epoch_0_step_5.txt"
    assert sorted(p.name for p in out.parent.iterdir()) == ["epoch_0_step_5.txt"]  # no temp file left


def test_rng_and_modes_untouched(model, tokenizer, predict_file, tmp_path):
    prompts = load_predict_prompts(str(predict_file), tokenizer)
    model.train()
    model.model.layers[0].eval()  # a mixed tree comes back as it was
    before = [m.training for m in model.modules()]
    torch.manual_seed(7)
    state = torch.get_rng_state()
    expected_next = torch.rand(4)
    torch.set_rng_state(state)
    rows = [write_predictions(model, tokenizer, prompts, tmp_path / f"p{i}.txt", 2, 6, seed=3) for i in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected_next)
    assert rows[0] == rows[1]  # sampled with the same fixed seed each call
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_fork_format_and_truncation(model, tokenizer, tmp_path):
    f = tmp_path / "fork.txt"
    f.write_text("User: hi\\nAssistant: ||| hello\nUser: Repeat after me: ram yak gold Assistant: \n", encoding="utf-8")
    prompts = load_predict_prompts(str(f), tokenizer, max_prompt_len=4)
    assert [p.prompt for p in prompts] == ["User: hi\\nAssistant:", "User: Repeat after me: ram yak gold Assistant:"]
    assert [p.reference for p in prompts] == ["hello", None]
    full = encode_prompts(tokenizer, [p.prompt for p in prompts])
    for p, ids in zip(prompts, full):
        assert p.prompt_ids == [tokenizer.bos_token_id] + ids[-3:]  # BOS kept, the end kept


def test_preference_rows(tokenizer, tmp_path):
    f = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": " Human: hi Assistant:", "chosen": " hello", "rejected": " no"}])
    (p,) = load_predict_prompts(str(f), tokenizer)
    assert (p.prompt, p.reference) == (" Human: hi Assistant:", " hello")
    assert p.prompt_ids == encode_prompts(tokenizer, [" Human: hi Assistant:"])[0]
    trl = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": " Human: hi Assistant:", "completion": " hello"},
                                               {"prompt": " Human: bye Assistant:"}])
    assert [(p.prompt, p.reference) for p in load_predict_prompts(str(trl), tokenizer)] == \
        [(" Human: hi Assistant:", " hello"), (" Human: bye Assistant:", None)]


def test_conversational_rows_are_read_as_step_3_reads_them(tokenizer, tmp_path):
    """Chat pairs and TRL's conversational prompt-completion rows: the prompt is the chat template's
    rendering of the turns before the answer (with the generation prompt), its ids those of that
    text, the reference the chosen / completion answer; a row without one has no reference."""
    user = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "hello"}],
             "rejected": user + [{"role": "assistant", "content": "no"}]},
            {"prompt": user, "completion": [{"role": "assistant", "content": "hey"}]},
            {"prompt": user}]
    got = load_predict_prompts(str(write_jsonl(tmp_path / "chat.jsonl", rows)), tokenizer)
    text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text.endswith("User: hi\nAssistant: ")
    assert [(p.prompt, p.reference) for p in got] == [(text, "hello"), (text, "hey"), (text, None)]
    assert all(p.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"] for p in got)


def test_bad_files_are_one_line_config_errors(tokenizer, tmp_path):
    missing = tmp_path / "nope" / "missing.jsonl"
    with pytest.raises(ConfigError) as e:
        load_predict_prompts(str(missing), tokenizer)
    assert str(e.value) == f"--predict_file {missing}: no such file or folder"
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], "{not json"])
    with pytest.raises(ConfigError, match=r"^--predict_file .*bad\.jsonl:2: invalid JSON"):
        load_predict_prompts(str(bad), tokenizer)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ConfigError, match=r"chat\.jsonl:1: predictions need the SFT format") as e:
        load_predict_prompts(str(chat), tokenizer)
    assert "\n" not in str(e.value)


def test_flags_and_hook(model, tokenizer, predict_file, tmp_path):
    from dataclasses import dataclass

    from transformers import HfArgumentParser

    @dataclass
    class Cfg(PredictArgs):
        output_dir: str = ""
        seed: int = 1

    (cfg,) = HfArgumentParser(Cfg).parse_args_into_dataclasses(
        ["--predict_file", str(predict_file), "--predict_steps", "2", "--predict_batch_size", "4",
         "--predict_max_new_tokens", "3", "--predict_greedy", "--output_dir", str(tmp_path / "o")])
    cfg.check_predict()
    hook = make_predict_hook(cfg, tokenizer, 64)

    class Engine(torch.nn.Module):  # stands in for a DeepSpeed engine: generation goes through .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    engine = Engine(model)
    assert hook(engine, 0, 1) is None and hook(engine, 0, 3) is None
    assert len(hook(engine, 1, 4)) == len(ROWS)
    assert [p.name for p in (tmp_path / "o" / "predicts").iterdir()] == ["epoch_1_step_4.txt"]
    assert make_predict_hook(Cfg(predict_file=str(predict_file), predict_steps=-1), tokenizer) is None
    with pytest.raises(ConfigError, match="--predict_steps needs --predict_file"):
        Cfg(predict_steps=5).check_predict()
    with pytest.raises(ConfigError, match="--predict_batch_size must be >= 1"):
        Cfg(predict_batch_size=0).check_predict()
