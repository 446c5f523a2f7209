"""Alignment-handbook recipes as config files: the key table, notes, errors, dataset_mixer
fractions and dataset_splits (utils/handbook.py, the --data_fractions / --*_splits data layer)."""

import pytest
import yaml

from tests.conftest import write_jsonl
from utils.cli import parse_config
from utils.config import DPOConfig, SFTConfig
from utils.data import DataError, DataPart, Phase, SplitNames, load_step_records, read_dataset
from utils.cli.handbook import TABLE
from utils.engines import warmup_steps

SFT = {"instruction": "User: Repeat after me: fox red owl\nAssistant: ", "input": "", "output": "fox red owl"}
RECIPE = {"model_name_or_path": "m", "dataset_mixer": {"d": 1.0}, "output_dir": "o"}


def parse_recipe(tmp_path, cls=SFTConfig, argv=(), **keys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **keys}))
    return parse_config(cls, [str(path), *argv])


def one_line_error(capsys, tmp_path, **keys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_recipe(tmp_path, **keys)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


# (recipe keys, step config, expected field values); the last rows show which key wins a conflict
CASES = [
    ({"model_name_or_path": "org/model-7b"}, SFTConfig, {"model_name_or_path": "org/model-7b"}),
    ({"torch_dtype": "bfloat16"}, SFTConfig, {"dtype": "bf16"}),
    ({"torch_dtype": "float16"}, SFTConfig, {"dtype": "fp16"}),
    ({"torch_dtype": "auto"}, SFTConfig, {"dtype": "fp32"}),
    ({"bf16": True}, SFTConfig, {"dtype": "bf16"}),
    ({"fp16": True}, SFTConfig, {"dtype": "fp16"}),
    ({"chat_template": "{{ messages }}"}, SFTConfig, {"chat_template": "{{ messages }}"}),
    ({"trust_remote_code": True}, SFTConfig, {"trust_remote_code": True}),
    ({"dataset_mixer": {"a": 0.5, "b": 1.0}}, SFTConfig, {"data_path": ["a", "b"], "data_fractions": [0.5, 1.0]}),
    ({"dataset_splits": ["train_sft", "test_sft"]}, SFTConfig,
     {"train_splits": ["train_sft"], "test_splits": ["test_sft"]}),
    ({"dataset_splits": ["train"]}, SFTConfig, {"train_splits": ["train"], "test_splits": []}),
    ({"dataset_configs": ["default"]}, SFTConfig, {"data_path": ["d"]}),
    ({"max_seq_length": 128}, SFTConfig, {"max_seq_len": 128}),
    ({"max_length": 256}, DPOConfig, {"max_seq_len": 256}),
    ({"beta": 0.01}, DPOConfig, {"beta": 0.01}),
    ({"loss_type": "orpo", "beta": 0.05}, DPOConfig, {"loss_type": "orpo", "beta": 0.05}),
    ({"learning_rate": 2.0e-5}, SFTConfig, {"learning_rate": 2.0e-5}),
    ({"num_train_epochs": 3}, SFTConfig, {"num_train_epochs": 3}),
    ({"num_train_epochs": 2.0}, SFTConfig, {"num_train_epochs": 2}),
    ({"max_steps": -1}, SFTConfig, {"max_steps": 0}),
    ({"max_steps": 50}, SFTConfig, {"max_steps": 50}),
    ({"per_device_train_batch_size": 4}, SFTConfig, {"per_device_train_batch_size": 4}),
    ({"per_device_eval_batch_size": 2}, SFTConfig, {"per_device_eval_batch_size": 2}),
    ({"gradient_accumulation_steps": 8}, SFTConfig, {"gradient_accumulation_steps": 8}),
    ({"gradient_checkpointing": True}, SFTConfig, {"gradient_checkpointing": True}),
    ({"lr_scheduler_type": "linear"}, SFTConfig, {"lr_scheduler_type": "linear"}),
    ({"warmup_ratio": 0.1}, SFTConfig, {"warmup_ratio": 0.1, "num_warmup_steps": 0}),
    ({"warmup_steps": 7}, SFTConfig, {"num_warmup_steps": 7}),
    ({"weight_decay": 0.01, "adam_beta1": 0.8, "adam_beta2": 0.99}, SFTConfig,
     {"weight_decay": 0.01, "adam_beta1": 0.8, "adam_beta2": 0.99}),
    ({"max_grad_norm": 0.5}, SFTConfig, {"gradient_clipping": 0.5}),
    ({"use_peft": True}, SFTConfig, {"lora_dim": 16}),
    ({"use_peft": True, "lora_r": 8, "lora_alpha": 16}, SFTConfig, {"lora_dim": 8, "lora_alpha": 16}),
    ({"logging_steps": 5}, SFTConfig, {"logging_steps": 5}),
    ({"output_dir": "data/zephyr"}, SFTConfig, {"output_dir": "data/zephyr"}),
    ({"report_to": ["tensorboard"]}, SFTConfig, {"enable_tensorboard": True}),
    ({"report_to": "none"}, SFTConfig, {"enable_tensorboard": False}),
    ({"seed": 42}, SFTConfig, {"seed": 42, "data_seed": 42}),
    ({"eval_strategy": "steps", "eval_steps": 100}, SFTConfig, {"eval_steps": 100}),
    ({"eval_strategy": "epoch"}, SFTConfig, {"eval_steps": 0}),
    ({"evaluation_strategy": "no"}, SFTConfig, {"test_splits": []}),
    ({"save_strategy": "steps", "save_steps": 100}, SFTConfig, {"save_steps": 100}),
    ({"save_total_limit": 1}, SFTConfig, {"save_total_limit": 1}),
    ({"preprocessing_num_workers": 12}, SFTConfig, {"preprocessing_num_workers": 12}),
    # keys of our own flags pass through a recipe unchanged
    ({"data_split": "2,4,4", "rpo_alpha": 0.3}, DPOConfig, {"data_split": "2,4,4", "rpo_alpha": 0.3}),
    # conflicts: the stronger key wins whatever the order in the file
    ({"bf16": True, "torch_dtype": "float32"}, SFTConfig, {"dtype": "bf16"}),
    ({"save_steps": 100, "save_strategy": "no"}, SFTConfig, {"save_steps": 0}),
    ({"save_strategy": "no", "save_steps": 100}, SFTConfig, {"save_steps": 0}),
    ({"eval_steps": 100, "eval_strategy": "epoch"}, SFTConfig, {"eval_steps": 0}),
    ({"dataset_splits": ["train_sft", "test_sft"], "eval_strategy": "no"}, SFTConfig,
     {"train_splits": ["train_sft"], "test_splits": []}),
]


@pytest.mark.parametrize("keys, cls, expected", CASES, ids=lambda x: "-".join(x) if isinstance(x, dict) else None)
def test_each_key_maps_to_its_field(tmp_path, keys, cls, expected):
    cfg = parse_recipe(tmp_path, cls, **keys)
    assert {name: getattr(cfg, name) for name in expected} == expected


def test_every_table_key_has_a_case_or_a_note():
    mapped = {k for keys, _, _ in CASES for k in keys}
    noted = {"model_revision", "attn_implementation", "use_flash_attention_2", "dataset_num_proc",
             "dataset_text_field", "dataset_kwargs", "packing", "max_prompt_length", "gradient_checkpointing_kwargs",
             "logging_strategy", "logging_first_step", "log_level", "overwrite_output_dir", "remove_unused_columns",
             "do_eval", "do_train", "dataset_mixture", "optim"}
    assert set(TABLE) - mapped - noted == set()


def test_every_converter_says_what_its_key_becomes():
    assert [k for k, convert in TABLE.items() if not getattr(convert, "target", "")] == []


def test_flags_after_a_recipe_override_it(tmp_path):
    cfg = parse_recipe(tmp_path, argv=["--learning_rate", "0.5"], learning_rate=2e-5)
    assert cfg.learning_rate == 0.5


def test_warmup_ratio_becomes_steps_rounded_up(tmp_path):
    cfg = parse_recipe(tmp_path, warmup_ratio=0.1)
    assert warmup_steps(cfg, 95) == 10  # ceil(0.1 * 95) = ceil(9.5)
    assert warmup_steps(cfg, 100) == 10
    cfg = parse_recipe(tmp_path, warmup_steps=3)
    assert warmup_steps(cfg, 100) == 3


def test_ignored_keys_are_named_once(tmp_path):
    cfg = parse_recipe(tmp_path, push_to_hub=True, hub_model_id="x/y", hub_strategy="every_save",
                       hub_private_repo=True, wandb_project="p", run_name="r", model_revision="main",
                       report_to=["tensorboard", "wandb"], optim="adamw_bnb_8bit",
                       gradient_checkpointing_kwargs={"use_reentrant": False})
    assert cfg.notes == [
        "hub_model_id, hub_private_repo, hub_strategy, push_to_hub, run_name, wandb_project: hub and tracker "
        "settings, ignored here",
        "gradient_checkpointing_kwargs: DeepSpeed's activation checkpointing settings apply",
        "model_revision: the model's default revision is loaded",
        "optim: adamw_bnb_8bit: DeepSpeed's AdamW is the optimizer here",
        "report_to: wandb: only TensorBoard is written here",
    ]
    assert cfg.enable_tensorboard


def test_adamw_needs_no_note(tmp_path):
    assert getattr(parse_recipe(tmp_path, optim="adamw_torch"), "notes", []) == []


def test_unknown_recipe_key_is_one_line_error(tmp_path, capsys):
    err = one_line_error(capsys, tmp_path, learning_rat=1e-5, load_in_4bit=True)
    assert err == ("error: unknown config keys: learning_rat, load_in_4bit (reading the file as an "
                   "alignment-handbook recipe)")


def test_recipe_key_of_another_step_is_an_error(tmp_path, capsys):
    assert one_line_error(capsys, tmp_path, beta=0.1) == "error: unknown config keys: beta"


def test_ordinary_config_files_stay_strict(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "m", "data_path": "d", "output_dir": "o",
                                    "torch_dtype": "bfloat16"}))
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, [str(path)])
    assert capsys.readouterr().err.strip() == "error: unknown config keys: torch_dtype"


@pytest.mark.parametrize("keys, message", [
    ({"dataset_mixer": {"a": 1.5}}, "dataset_mixer a: the fraction of rows to use must be in (0, 1], got 1.5"),
    ({"dataset_mixer": ["a"]}, "dataset_mixer: expected a mapping of dataset -> fraction of its rows"),
    ({"dataset_splits": ["train", "validation"]},
     "dataset_splits: split 'validation' is neither a train nor a test split (its name must contain \"train\" "
     "or \"test\")"),
    ({"dataset_configs": ["tiny"]}, "dataset_configs: dataset configuration 'tiny' is not supported here (only "
                                    "the default)"),
    ({"num_train_epochs": 1.5}, "num_train_epochs: whole epochs only here, got 1.5"),
    ({"eval_strategy": "sometimes"}, "eval_strategy: expected no, steps or epoch, got 'sometimes'"),
    ({"warmup_ratio": 0.1, "warmup_steps": 5}, "--warmup_ratio and --num_warmup_steps both set the warmup; give one"),
])
def test_bad_recipe_values_are_one_line_errors(tmp_path, capsys, keys, message):
    assert one_line_error(capsys, tmp_path, **keys) == f"error: {message}"


def test_dataset_mixture_form(tmp_path):
    entry = {"config": "default", "columns": ["messages"]}
    mixture = {"datasets": [{**entry, "id": "a", "split": "train_sft", "weight": 0.25},
                            {**entry, "id": "a", "split": "test_sft", "weight": 1.0},
                            {**entry, "id": "b", "split": "train_sft", "weight": 1.0},
                            {**entry, "id": "b", "split": "test_sft", "weight": 0.5}],
               "test_split_size": 1000, "seed": 7}
    keys = {k: v for k, v in RECIPE.items() if k != "dataset_mixer"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**keys, "dataset_mixture": mixture}))
    cfg = parse_config(SFTConfig, [str(path)])
    assert (cfg.data_path, cfg.data_fractions, cfg.train_splits, cfg.test_splits, cfg.data_seed) == \
        (["a", "b"], [0.25, 1.0], ["train_sft"], ["test_sft"], 7)
    assert cfg.notes == [
        "dataset_mixture: columns of a: the record format is detected from the data here",
        "dataset_mixture: columns of b: the record format is detected from the data here",
        "dataset_mixture: weight of b (test_sft): held-out splits are used whole",
        "dataset_mixture: test_split_size: held-out rows come from the datasets' test splits here",
    ]


def test_dataset_mixture_needs_one_set_of_split_names(tmp_path, capsys):
    mixture = {"datasets": [{"id": "a", "split": "train_sft"}, {"id": "b", "split": "train"}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "m", "output_dir": "o", "dataset_mixture": mixture}))
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, [str(path)])
    assert capsys.readouterr().err.strip() == ("error: dataset_mixture: b reads splits ['train'], a reads "
                                               "['train_sft']; every dataset reads the same split names here")


# -- the data layer: --data_fractions, --train_splits, --test_splits -----------------------
def rows(tmp_path, name: str, n: int):
    return write_jsonl(tmp_path / f"{name}.jsonl", [{**SFT, "output": f"{name}{i}"} for i in range(n)])


def outputs(records) -> list[str]:
    return [r.data["output"] for r in records]


def test_fractions_take_int_of_fraction_times_rows(tmp_path):
    a, b = str(rows(tmp_path, "a", 10)), str(rows(tmp_path, "b", 7))
    data = load_step_records(DataPart((a, b), None, seed=1, fractions=(0.5, 0.3)), Phase.SFT)
    taken = outputs(data.train)
    assert sum(x.startswith("a") for x in taken) == 5   # int(0.5 * 10)
    assert sum(x.startswith("b") for x in taken) == 2   # int(0.3 * 7) = int(2.1)
    assert taken == outputs(load_step_records(DataPart((a, b), None, seed=1, fractions=(0.5, 0.3)), Phase.SFT).train)
    assert taken != outputs(load_step_records(DataPart((a, b), None, seed=2, fractions=(0.5, 0.3)), Phase.SFT).train)
    # rows keep their file order
    assert taken == sorted(taken[:5], key=lambda x: int(x[1:])) + sorted(taken[5:], key=lambda x: int(x[1:]))


def test_fraction_applies_to_the_step_share_and_spares_the_test_split(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{**SFT, "output": f"r{i}"} for i in range(20)])
    write_jsonl(tmp_path / "d" / "test.jsonl", [SFT] * 4)
    data = load_step_records(DataPart((str(tmp_path / "d"),), "1,1,0", seed=3, fractions=(0.35,)), Phase.SFT)
    share = load_step_records(DataPart((str(tmp_path / "d"),), "1,1,0", seed=3), Phase.SFT)
    assert (len(share.train), len(data.train), len(data.test)) == (10, 3, 4)  # int(0.35 * 10) = 3
    assert set(outputs(data.train)) <= set(outputs(share.train))


def test_fraction_that_keeps_no_row_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"a.jsonl: --data_fractions 0.1 keeps no row of 7"):
        load_step_records(DataPart((str(rows(tmp_path, "a", 7)),), None, seed=1, fractions=(0.1,)), Phase.SFT)


def test_split_names_pick_folder_files(tmp_path):
    d = tmp_path / "d"
    for name, n in (("train", 1), ("test", 1), ("train_sft", 3), ("train_gen", 2), ("test_sft", 4)):
        write_jsonl(d / f"{name}.jsonl", [{**SFT, "output": f"{name}{i}"} for i in range(n)])
    raw = read_dataset(str(d), splits=SplitNames(("train_sft", "train_gen"), ("test_sft",)))
    assert outputs(raw.train) == ["train_sft0", "train_sft1", "train_sft2", "train_gen0", "train_gen1"]
    assert outputs(raw.test) == ["test_sft0", "test_sft1", "test_sft2", "test_sft3"]
    assert outputs(read_dataset(str(d)).test) == ["test0"]   # unset: today's train / test
    assert read_dataset(str(d), splits=SplitNames(None, ())).test == []
    with pytest.raises(DataError, match=r"d: no test_prefs.\* file \(split 'test_prefs' of --test_splits\)"):
        read_dataset(str(d), splits=SplitNames(("train_sft",), ("test_prefs",)))


def test_split_names_pick_dataset_splits(tmp_path):
    import datasets

    def part(name, n):
        return datasets.Dataset.from_list([{**SFT, "output": f"{name}{i}"} for i in range(n)])
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": part("train", 2), "train_prefs": part("train_prefs", 3),
                          "test_prefs": part("test_prefs", 2), "test": part("test", 1)}).save_to_disk(str(saved))
    raw = read_dataset(str(saved), splits=SplitNames(("train_prefs",), ("test_prefs",)))
    assert outputs(raw.train) == ["train_prefs0", "train_prefs1", "train_prefs2"]
    assert outputs(raw.test) == ["test_prefs0", "test_prefs1"]
    assert raw.train[0].where == f"{saved}[train_prefs] row 0"
    with pytest.raises(DataError, match=r"has no 'train_sft' split \(--train_splits; it has train, train_prefs"):
        read_dataset(str(saved), splits=SplitNames(("train_sft",), None))


def test_data_flags_work_without_a_recipe(capsys):
    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    cfg = parse_config(SFTConfig, base + ["--data_path", "a", "b", "--data_fractions", "0.5", "1",
                                          "--train_splits", "train_sft", "--test_splits", "test_sft"])
    assert (cfg.data_fractions, cfg.train_splits, cfg.test_splits) == ([0.5, 1.0], ["train_sft"], ["test_sft"])
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, base + ["--data_path", "a", "b", "--data_fractions", "0.5"])
    assert capsys.readouterr().err.strip() == ("error: --data_fractions gives 1 fractions for 2 --data_path "
                                               "entries; give one per entry")
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, base + ["--data_path", "a", "--train_splits", "x", "--test_splits", "x"])
    assert capsys.readouterr().err.strip() == "error: --train_splits and --test_splits both name 'x'"


def test_chat_template_is_set_on_the_tokenizer(tiny_dir, tmp_path):
    from utils.models import load_tokenizer_for

    cfg = parse_recipe(tmp_path, model_name_or_path=str(tiny_dir), chat_template="{{ 'x' }}")
    assert load_tokenizer_for(cfg).chat_template == "{{ 'x' }}"


def test_recipe_after_the_launchers_local_rank(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "learning_rate": 2e-5}))
    cfg = parse_config(SFTConfig, ["--local_rank=0", str(path), "--disable_tqdm"])
    assert (cfg.local_rank, cfg.learning_rate, cfg.disable_tqdm) == (0, 2e-5, True)
