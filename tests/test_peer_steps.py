"""Step-1/2 behaviour of DeepSpeed-Chat's flags on the tiny model: a DeepSpeed JSON merged over
ours, the end-of-conversation token, printed losses, limited evaluation, predictions."""
from __future__ import annotations

import json

from tests.conftest import DEMO_DATA, read_metrics, run_module, write_jsonl

SFT = "training.step1_sft.main"


def sft_args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
            "--learning_rate", "1e-3", "--disable_tqdm", *map(str, extra)]


def sft_data(tmp_path, n=64):
    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    write_jsonl(tmp_path / "data" / "train.txt", lines[:n])
    write_jsonl(tmp_path / "data" / "test.txt", lines[n:n + 40])
    return tmp_path / "data"


def test_deepspeed_json_print_loss_eval_iters_and_predictions(tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto",
                              "gradient_clipping": 0.5, "zero_optimization": {"stage": 1}}))
    out = tmp_path / "o"
    p = run_module(SFT, sft_args(tiny_dir, data, out, "--deepspeed", "--deepspeed_config", ds, "--print_loss",
                                 "--eval_iters", 2, "--max_steps", 4, "--predict_file", data / "test.txt",
                                 "--predict_steps", 2, "--predict_batch_size", 16, "--predict_max_new_tokens", 4))
    merged = json.loads(p.stdout.split("[deepspeed] model config: ", 1)[1].splitlines()[0])
    assert merged["gradient_clipping"] == 0.5 and merged["zero_optimization"]["stage"] == 1
    assert merged["train_micro_batch_size_per_gpu"] == 4 and merged["train_batch_size"] == 4
    assert "[flags] --per_device_train_batch_size: 4 from --deepspeed_config" in p.stdout
    losses = [line for line in p.stdout.splitlines() if line.startswith("[train] epoch 0 step ")]
    assert len(losses) == 4
    for step in (2, 4):
        rows = [json.loads(x) for x in (out / "predicts" / f"epoch_0_step_{step}.txt").read_text().splitlines()]
        assert len(rows) == 40 and all(set(r) >= {"prompt", "answer", "reference"} for r in rows)


def test_eval_iters_limits_the_batches(tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(SFT, sft_args(tiny_dir, data, full, "--max_steps", 1, "--per_device_eval_batch_size", 5))
    run_module(SFT, sft_args(tiny_dir, data, part, "--max_steps", 1, "--per_device_eval_batch_size", 5,
                             "--eval_iters", 1))
    first = [r for r in read_metrics(full) if "eval/loss" in r][0]
    limited = [r for r in read_metrics(part) if "eval/loss" in r][0]
    assert first["eval/loss"] != limited["eval/loss"]


def test_eot_token_ends_every_answer_and_is_saved(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = sft_data(tmp_path, 32)
    out = tmp_path / "eot"
    run_module(SFT, sft_args(tiny_dir, data, out, "--add_eot_token", "--max_steps", 2))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == len(tok) - 1
    assert model.get_input_embeddings().num_embeddings == len(tok) and model.config.eos_token_id == len(tok) - 1


def test_progress_in_a_log_file_is_whole_lines():
    import io

    from utils.logging import LineProgress

    out = io.StringIO()
    bar = LineProgress(total=4, initial=1, desc="ppo", interval=0.0, stream=out)
    bar.set_postfix(reward="0.500", kl="0.010")
    bar.update(1)
    bar.update(2)
    lines = out.getvalue().splitlines()
    assert [x.rsplit(" ", 2)[0] for x in lines] == ["[ppo] 2/4 (50%) reward=0.500, kl=0.010",
                                                    "[ppo] 4/4 (100%) reward=0.500, kl=0.010"]
    assert "\r" not in out.getvalue()


def test_library_bars_are_off_in_a_log_file(tmp_path):
    """A dataset in the hub's layout goes through datasets.load_dataset, whose split-generation bar
    printed carriage returns into a redirected log before quiet_library_bars."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import ROOT, child_env

    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["p"] * 8, "chosen": ["a"] * 8, "rejected": ["b"] * 8}),
                   tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    code = ("from utils.logging import quiet_library_bars; quiet_library_bars(); "
            "from utils.data.readers import read_dataset; "
            f"print(len(read_dataset({str(tmp_path / 'hub')!r}).train))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=child_env(1, {"HF_DATASETS_CACHE": str(tmp_path / "cache")}))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "8\n" and "\r" not in p.stderr and "Generating" not in p.stderr
