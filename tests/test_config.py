import pytest

from utils.cli import parse_config
from utils.config import SFTConfig
from utils.ds_config import eval_ds_config, train_ds_config

BASE = ["--model_name_or_path", "m", "--data_path", "d", "--output_dir", "o"]


def test_train_ds_config_zero3_offload_bf16():
    c = train_ds_config(micro_batch_size=4, gradient_accumulation_steps=2, world_size=3, zero_stage=3,
                        offload=True, dtype="bf16", gradient_clipping=0.5)
    assert c["train_batch_size"] == 24
    assert c["zero_optimization"]["stage"] == 3
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert c["bf16"] == {"enabled": True} and "fp16" not in c
    assert c["gradient_clipping"] == 0.5


def test_train_ds_config_rejects_bad_values():
    with pytest.raises(ValueError, match="offload needs zero_stage"):
        train_ds_config(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1, offload=True)
    with pytest.raises(ValueError, match="dtype"):
        train_ds_config(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1, dtype="int8")


def test_eval_ds_config_has_no_optimizer_sharding_below_stage3():
    c = eval_ds_config(micro_batch_size=2, world_size=2, zero_stage=2, dtype="fp16")
    assert c["zero_optimization"] == {"stage": 0} and c["fp16"]["enabled"]
    assert eval_ds_config(micro_batch_size=2, world_size=2, zero_stage=3, offload=True)["zero_optimization"] == \
        {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": False}}


def test_flags_and_defaults():
    cfg = parse_config(SFTConfig, BASE + ["--data_path", "a", "b", "--zero_stage", "2", "--offload"])
    assert cfg.data_path == ["a", "b"] and cfg.zero_stage == 2 and cfg.offload
    assert cfg.data_seed == cfg.seed


def test_yaml_file_then_flag_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path: m\ndata_path: [x, y]\noutput_dir: o\nlearning_rate: 0.5\n")
    cfg = parse_config(SFTConfig, [str(f), "--learning_rate", "0.25"])
    assert cfg.data_path == ["x", "y"] and cfg.learning_rate == 0.25


@pytest.mark.parametrize("argv,msg", [
    (BASE + ["--only_optimize_lora"], "--only_optimize_lora needs --lora_dim"),
    (BASE + ["--data_split", "1,2"], "--data_split must be three"),
    (["--data_path", "d", "--output_dir", "o"], "--model_name_or_path is required"),
])
def test_cross_field_checks_print_one_line(capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        parse_config(SFTConfig, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and msg in err


@pytest.mark.parametrize("extra,msg", [
    (["--center_rewards_coefficient", "-0.1"], "--center_rewards_coefficient must be >= 0, got -0.1"),
    (["--center_rewards_coefficient", "nan"], "--center_rewards_coefficient must be >= 0, got nan"),
    (["--center_rewards_coefficient", "0.01", "--rm_loss", "score"],
     "--center_rewards_coefficient needs --rm_loss pairwise or mixed"),
])
def test_reward_config_checks_print_one_line(capsys, extra, msg):
    from utils.config import RewardConfig

    with pytest.raises(SystemExit) as e:
        parse_config(RewardConfig, BASE + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and msg in err
    assert parse_config(RewardConfig, BASE + ["--center_rewards_coefficient", "0.01"]).center_rewards_coefficient \
        == 0.01


def test_offload_at_stage0_is_named_and_off():
    cfg = parse_config(SFTConfig, BASE + ["--offload"])
    assert cfg.offload is False
    assert cfg.notes == ["--offload: ZeRO stage 0 keeps everything on the device; use --zero_stage 1-3 to offload"]


def test_yaml_scalar_for_a_list_flag_is_one_item(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path: m\ndata_path: data/sft\noutput_dir: o\n")
    assert parse_config(SFTConfig, [str(f)]).data_path == ["data/sft"]


def test_unknown_yaml_key(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text('{"model_name_or_path": "m", "lerning_rate": 1}')
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, [str(f)])
    assert "unknown config keys: lerning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("flags, sft, step2", [
    ([], False, True),                                   # TRL's defaults: SFT keeps dropout, RM and DPO don't
    (["--disable_dropout"], True, True),
    (["--disable_dropout", "false"], False, False),
    (["--dropout", "0.1"], False, False),                # a probability asked for is used
])
def test_dropout_defaults_per_step(flags, sft, step2):
    from utils.config import DPOConfig, RewardConfig

    assert parse_config(SFTConfig, BASE + flags).disable_dropout is sft
    for config in (RewardConfig, DPOConfig):
        assert parse_config(config, BASE + flags).disable_dropout is step2
