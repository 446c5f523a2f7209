"""DeepSpeed-Chat's and its fork's command lines parse here, mean the same, and mistakes are one line."""
import json

import pytest

from tests.peer_scripts import COMMANDS, FLAGS, substitute
from utils.cli import parse_config
from utils.config import DPOConfig, RLHFConfig, RewardConfig, SFTConfig
from utils.ds_config import merge_user_config

CONFIGS = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig, "rlhf": RLHFConfig}
PATHS = {"MODEL": "m", "ACTOR": "actor", "CRITIC": "critic", "REWARD": "rm", "TOKENIZER": "actor",
         "REWARD_TOKENIZER": "rm", "COMET": "comet.ckpt", "DATA": "data", "OUTPUT": "out", "CACHE": "cache",
         "PREV": "prev"}


def parse(cmd):
    return parse_config(CONFIGS[cmd.step], substitute(cmd, PATHS))


def find(suffix: str, *with_flags: str):
    hits = [c for c in COMMANDS if c.source.endswith(suffix) and all(f in c.argv for f in with_flags)]
    assert hits, suffix
    return hits[0]


HYBRID = [c for c in COMMANDS if "--iterative_alignment" in c.argv]
PLAIN = [c for c in COMMANDS if c not in HYBRID]


@pytest.mark.parametrize("step", sorted(FLAGS))
def test_every_peer_flag_is_accepted_or_refused_by_name(step):
    from utils.cli import accepted_flags
    from utils.cli.peers import HYBRID_ALIGNMENT_FLAGS

    names = accepted_flags(CONFIGS[step])
    refused = {f for f in FLAGS[step] if f[2:].replace("-", "_") in HYBRID_ALIGNMENT_FLAGS}
    assert [f for f in FLAGS[step] if f[2:] not in names and f not in refused] == []
    assert len(FLAGS[step]) > 40


def test_every_peer_script_is_represented():
    assert len(PLAIN) >= 60 and len(HYBRID) == 2
    assert {c.step for c in COMMANDS} == set(CONFIGS)


@pytest.mark.parametrize("cmd", PLAIN, ids=lambda c: f"{c.step}:{c.source.split('/', 1)[0]}:"
                                                    f"{c.source.rsplit('/', 2)[-2]}/{c.source.rsplit('/', 1)[-1]}")
def test_peer_command_parses(cmd):
    cfg = parse(cmd)
    if "--deepspeed" in cmd.argv:
        assert "--deepspeed: DeepSpeed is always the engine here" in cfg.notes


@pytest.mark.parametrize("cmd", HYBRID, ids=lambda c: c.step)
def test_hybrid_alignment_is_refused_in_one_line(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        parse(cmd)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hybrid alignment training" in err and "not supported here" in err


def test_fork_rlhf_batch_names_and_per_model_flags():
    cfg = parse(find("DeepSpeed-Chat-Extension/scripts/rlhf.sh"))
    # the fork's step-3 names: prompts per generation batch, PPO minibatch, generation batches
    assert (cfg.per_device_generation_batch_size, cfg.per_device_training_batch_size) == (4, 4)
    assert (cfg.generation_batches, cfg.ppo_epochs, cfg.ppo_mini_epochs) == (2, 1, 4)
    assert cfg.gradient_accumulation_steps == 4 and cfg.reward_type == "lex" and not cfg.remove_critic_model
    actor, critic = cfg.model_part("actor"), cfg.model_part("critic")
    assert actor.disable_dropout and critic.disable_dropout   # the critic: step 3's default
    assert actor.gradient_checkpointing and critic.gradient_checkpointing
    assert (actor.weight_decay, critic.weight_decay) == (0.1, 0.1)
    assert (actor.learning_rate, critic.learning_rate) == (1e-5, 5e-6)
    assert cfg.tokenizer_name_or_path == "actor" and cfg.reward_tokenizer_name_or_path == "rm"
    assert cfg.data_split == "0,0,1" and cfg.data_output_path == "cache"
    assert any(n.startswith("--num_padding_at_beginning") for n in cfg.notes)


def test_fork_comet_example_is_critic_free_with_sft_loss():
    cfg = parse(find("rlhf_with_comet_reward/train.sh"))
    assert cfg.use_comet_model and cfg.comet_model_path == ["comet.ckpt"] and cfg.devices_comet_model == [0]
    assert cfg.comet_model_batch_size == 1 and cfg.weights_comet_model == [1.0]
    assert cfg.remove_critic_model and cfg.add_sft_loss and not cfg.use_reward_model
    assert "--devices_comet_model: no GPU here: the COMET models run on the CPU" in cfg.machine_notes(gpu=False)
    assert cfg.machine_notes(gpu=True) == []


def test_fork_extra_losses_example():
    cfg = parse(find("add_extra_loss_for_rlhf/train.sh"))
    assert cfg.add_sft_loss and cfg.add_pretrained_loss and cfg.unsupervised_dataset_name is None
    assert (cfg.factor_rl_loss, cfg.factor_sft_loss, cfg.factor_pretrained_loss) == (0.6, 0.3, 0.1)


def test_fork_reward_scores_example():
    cfg = parse(find("training_reward_with_scores/train.sh"))
    assert cfg.gpt_annotated_score and cfg.rm_loss == "score" and cfg.disable_dropout
    assert (cfg.save_steps, cfg.eval_steps, cfg.zero_stage) == (500, 100, 3)


def test_step3_dropout_is_off_unless_asked_for():
    default = parse_config(RLHFConfig, BASE3)
    assert default.model_part("actor").disable_dropout and default.model_part("critic").disable_dropout
    kept = parse_config(RLHFConfig, BASE3 + ["--actor_dropout", "0.1", "--disable_critic_dropout", "false"])
    actor, critic = kept.model_part("actor"), kept.model_part("critic")
    assert (actor.disable_dropout, actor.dropout) == (False, 0.1)
    assert (critic.disable_dropout, critic.dropout) == (False, None)   # the model's own dropout
    both = parse_config(RLHFConfig, BASE3 + ["--dropout", "0.05"])
    assert not both.model_part("actor").disable_dropout and both.model_part("critic").dropout == 0.05


def test_dschat_step3_names_and_gpu_flags_on_cpu():
    cfg = parse(find("step3_rlhf_finetuning/training_scripts/opt/multi_node/run_66b.sh"))
    assert cfg.model_part("actor").dropout == 0.0 and cfg.model_part("critic").dropout is None
    assert cfg.model_part("actor").lora_dim == 128 and cfg.model_part("actor").lora_module_name == "decoder.layers."
    assert cfg.model_part("critic").lora_dim == 0
    assert (cfg.inference_tp_size, cfg.tp_gather_partition_size) == (8, 4)
    # what a GPU would change is decided when the run builds, not when the flags parse
    cpu = "\n".join(cfg.machine_notes(gpu=False))
    assert "--enable_hybrid_engine: needs a GPU" in cpu
    assert "--inference_tp_size: tunes the hybrid engine, which is off in this run" in cpu
    assert not any("hybrid" in n for n in cfg.notes)
    assert cfg.machine_notes(gpu=True) == []


def test_dschat_defaults_when_a_script_gives_no_data_path():
    cfg = parse(find("step1_supervised_finetuning/training_scripts/opt/single_gpu/run_1.3b.sh"))
    assert cfg.data_path == ["Dahoas/rm-static"] and cfg.data_split == "2,4,4"
    assert cfg.lora_dim == 128 and cfg.gradient_accumulation_steps == 8 and cfg.enable_tensorboard


def test_dschat_test_mode_stops_at_test_stop_step():
    cfg = parse(find("step3_rlhf_finetuning/training_scripts/opt/single_node/sweep/run_single.sh",
                     "--enable_test_mode"))
    assert cfg.max_steps == 5


def test_dschat_step2_dropout_and_padding():
    cfg = parse(find("step2_reward_model_finetuning/training_scripts/opt/single_node/run_350m.sh"))
    assert cfg.dropout == 0.0 and not hasattr(cfg, "num_padding_at_beginning")
    assert "--num_padding_at_beginning: not needed: scores are read at each answer's EOS, found by length" in cfg.notes
    assert cfg.data_path[:2] == ["Dahoas/rm-static", "Dahoas/full-hh-rlhf"]


BASE3 = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c", "--data_path", "d",
         "--output_dir", "o"]


@pytest.mark.parametrize("argv,msg", [
    (["--learnig_rate", "1e-5"], "error: unknown flag --learnig_rate (did you mean --learning_rate?)"),
    (["--per_device_train_batch_sizes", "4"],
     "error: unknown flag --per_device_train_batch_sizes (did you mean --per_device_train_batch_size?)"),
    (["--frobnicate"], "error: unknown flag --frobnicate"),
    (["--dtype", "fp8"], "error: argument --dtype: invalid choice: 'fp8' (choose from 'fp32', 'bf16', 'fp16')"),
    (["--ewc_max_weight", "3"], "error: --ewc_max_weight belongs to the fork's hybrid alignment training"),
])
def test_flag_mistakes_are_one_line_exit_2(argv, msg, capsys, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        parse_config(SFTConfig, ["--model_name_or_path", "m", "--output_dir", str(out), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(msg), err
    assert not out.exists()


def test_unknown_flag_is_reported_before_missing_ones(capsys):
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, ["--learnig_rate", "1"])
    assert capsys.readouterr().err == "error: unknown flag --learnig_rate (did you mean --learning_rate?)\n"


def test_unknown_flag_through_the_entry_point_writes_nothing(tmp_path):
    from tests.conftest import run_module

    out = tmp_path / "o"
    p = run_module("training.step1_sft.main", ["--model_name_or_path", "m", "--data_path", "d",
                                               "--output_dir", str(out), "--learnig_rate", "1"], check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["error: unknown flag --learnig_rate (did you mean --learning_rate?)"]
    assert not out.exists()


def test_alias_spellings_set_the_same_field():
    a = parse_config(RLHFConfig, BASE3 + ["--per_device_train_batch_size", "3", "--generation_batch_numbers", "2",
                                          "--per_device_mini_train_batch_size", "5", "--unsup_coef", "0.5",
                                          "--whiten_critic_values", "false", "--offload_critic_model"])
    b = parse_config(RLHFConfig, BASE3 + ["--per_device_generation_batch_size", "3", "--generation_batches", "2",
                                          "--per_device_training_batch_size", "5", "--factor_pretrained_loss",
                                          "0.5", "--whiten_advantages", "false", "--offload_reward_model"])
    for f in ("per_device_generation_batch_size", "generation_batches", "per_device_training_batch_size",
              "factor_pretrained_loss", "whiten_advantages"):
        assert getattr(a, f) == getattr(b, f)
    assert a.per_device_generation_batch_size == 3 and a.factor_pretrained_loss == 0.5 and not a.whiten_advantages
    # at critic stage 0 there is nothing to offload: named, and off
    assert not a.offload_reward_model and any(n.startswith("--offload_reward_model") for n in a.notes)


def test_step3_behaviour_flags():
    cfg = parse_config(RLHFConfig, BASE3 + ["--reward_type", "seq", "--whiten_rewards", "--reward_bias", "0.5"])
    assert cfg.remove_critic_model and cfg.reward_normalization == "queue" and cfg.reward_bias == 0.5
    dschat_ptx = parse_config(RLHFConfig, BASE3 + ["--unsupervised_dataset_name", "wikitext",
                                                   "--unsupervised_dataset_config_name", "wikitext-2-raw-v1"])
    assert dschat_ptx.add_pretrained_loss and dschat_ptx.factor_pretrained_loss == 27.8
    assert dschat_ptx.factor_rl_loss == 1.0
    fork_ptx = parse_config(RLHFConfig, BASE3 + ["--add_pretrained_loss"])
    assert fork_ptx.add_pretrained_loss and fork_ptx.factor_pretrained_loss == 0.15 and fork_ptx.factor_rl_loss == 0.7


def test_step3_generation_flags():
    default = parse_config(RLHFConfig, BASE3 + ["--actor_zero_stage", "3"])
    assert default.ds3_gather_for_generation and default.cache_implementation is None
    assert not getattr(default, "notes", [])
    kept = parse_config(RLHFConfig, BASE3 + ["--actor_zero_stage", "3", "--ds3_gather_for_generation", "false",
                                             "--cache_implementation", "static"])
    assert not kept.ds3_gather_for_generation and kept.cache_implementation == "static"
    assert not getattr(kept, "notes", [])
    stage2 = parse_config(RLHFConfig, BASE3 + ["--actor_zero_stage", "2", "--ds3_gather_for_generation", "false"])
    assert stage2.notes == ["--ds3_gather_for_generation: only ZeRO-3 partitions the actor's weights"]


@pytest.mark.parametrize("argv,msg", [
    (["--cache_implementation", "paged"], "--cache_implementation"),
    (["--remove_kl_penalty", "--adaptive_kl"], "--adaptive_kl steers the KL penalty in the reward"),
    (["--critic_go_first_steps", "2", "--remove_critic_model"], "--critic_go_first_steps needs a critic"),
    (["--update_reference_with_sampling"], "--update_reference_with_sampling needs --add_sft_loss"),
    (["--enable_mixed_precision_lora"], "--enable_mixed_precision_lora needs --actor_lora_dim > 0"),
    (["--enable_ema", "--actor_zero_stage", "3"], "--enable_ema needs --actor_zero_stage 0-2"),
    (["--predict_steps", "10"], "--predict_steps needs --predict_file"),
    (["--data_split", "2,4"], "--data_split must be three"),
    (["--data_format", "chat"], "--data_format chat: step 3 reads prompts in the SFT format"),
    (["--reward_queue_size", "0"], "--reward_queue_size must be >= 1"),
    (["--kl_horizon", "0"], "--kl_horizon must be >= 1"),
    (["--target_kl", "0"], "--target_kl must be > 0"),
    # the advantage estimators' flags
    (["--advantage_estimator", "gae", "--remove_critic_model"], "--advantage_estimator gae needs the critic"),
    (["--advantage_estimator", "gae", "--reward_type", "seq"], "--advantage_estimator gae needs the critic"),
    (["--drop_uniform_groups"], "--drop_uniform_groups needs groups"),
    (["--use_kl_loss", "--remove_kl_penalty"], "--use_kl_loss needs the reference model"),
    (["--use_kl_loss", "--adaptive_kl"], "--adaptive_kl steers the KL penalty in the reward"),
    (["--cliprange_low", "1.5"], "--cliprange_low must be in [0, 1)"),
    (["--num_samples_per_prompt", "0"], "--num_samples_per_prompt must be >= 1"),
    # ESRL's
    (["--esrl_min_samples", "5", "--esrl_max_samples", "4"], "--esrl_min_samples and --esrl_max_samples need"),
    (["--dynamic_sampling", "--num_samples_per_prompt", "2", "--esrl_min_samples", "3", "--esrl_max_samples", "4"],
     "--esrl_min_samples 3 exceeds the budget --num_samples_per_prompt 2"),
    (["--esrl_skip_capability", "1.5"], "--esrl_skip_capability must be in [0, 1]"),
    (["--esrl_eliminate_ratio", "1"], "--esrl_eliminate_ratio must be in [0, 1)"),
])
def test_step3_cross_checks(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(RLHFConfig, BASE3 + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and msg in err, err


def test_step3_data_format_sft_refuses_pairs_and_auto_takes_them(tokenizer, tmp_path):
    from tests.conftest import write_jsonl
    from utils.data import DataError, read_dataset
    from utils.data.rlhf import prompt_examples

    path = write_jsonl(tmp_path / "p" / "train.jsonl", [{"prompt": "User: hi\nAssistant: ", "chosen": "hello",
                                                         "rejected": "no"}])
    records = read_dataset(str(path)).train
    examples, _ = prompt_examples(records, tokenizer, 32, 48, False, fmt="auto")
    assert examples[0].reference == "hello"
    with pytest.raises(DataError, match=r"train.jsonl:1: record is preference format but --data_format is sft"):
        prompt_examples(records, tokenizer, 32, 48, False, fmt="sft")


def test_user_deepspeed_config_is_merged_over_ours(tmp_path):
    ours = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2, "offload_optimizer": {}},
            "gradient_clipping": 1.0, "bf16": {"enabled": True}}
    user = {"zero_optimization": {"stage": 3, "overlap_comm": True}, "gradient_clipping": "auto",
            "steps_per_print": 5}
    merged = merge_user_config(ours, user)
    assert merged == {"train_micro_batch_size_per_gpu": 8,
                      "zero_optimization": {"stage": 3, "offload_optimizer": {}, "overlap_comm": True},
                      "gradient_clipping": 1.0, "bf16": {"enabled": True}, "steps_per_print": 5}
    assert ours["zero_optimization"] == {"stage": 2, "offload_optimizer": {}}


def test_user_deepspeed_config_batch_keys_become_the_flags(tmp_path, capsys):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto"}))
    cfg = parse_config(SFTConfig, ["--model_name_or_path", "m", "--output_dir", "o", "--deepspeed",
                                   "--deepspeed_config", str(f), "--per_device_train_batch_size", "8",
                                   "--gradient_accumulation_steps", "3"])
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 3)
    assert "--per_device_train_batch_size: 2 from --deepspeed_config (train_micro_batch_size_per_gpu) replaces 8" \
        in cfg.notes
    f.write_text("{not json")
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, ["--model_name_or_path", "m", "--output_dir", "o", "--deepspeed_config", str(f)])
    assert f"--deepspeed_config {f}: invalid JSON" in capsys.readouterr().err


def test_hybrid_engine_flags_reach_deepspeeds_section():
    from training.step3_rlhf.rlhf_engine import hybrid_engine_config

    cfg = parse_config(RLHFConfig, BASE3 + ["--enable_hybrid_engine", "--inference_tp_size", "2",
                                            "--tp_gather_partition_size", "4", "--unpin_actor_parameters",
                                            "--release_inference_cache", "--max_prompt_seq_len", "64",
                                            "--max_answer_seq_len", "32"])
    assert hybrid_engine_config(cfg) == {"enabled": True, "max_out_tokens": 96, "inference_tp_size": 2,
                                         "release_inference_cache": True, "pin_parameters": False,
                                         "tp_gather_partition_size": 4}


def test_inert_companion_flags_are_named():
    cfg = parse_config(RLHFConfig, BASE3 + ["--tensorboard_path", "tb", "--test_stop_step", "3",
                                            "--print_answers_interval", "5", "--eot_token", "<eot>",
                                            "--unsupervised_dataset_config_name", "c"])
    assert cfg.max_steps == 0
    assert {n.split(":")[0] for n in cfg.notes} == {"--tensorboard_path", "--test_stop_step", "--print_answers_interval",
                                                   "--eot_token", "--unsupervised_dataset_config_name"}


def test_temperature_under_dynamic_sampling_is_named():
    cfg = parse_config(RLHFConfig, BASE3 + ["--dynamic_sampling", "--temperature", "0.7"])
    assert "--temperature: ESRL sets each prompt's temperature (--esrl_temperature_min/max)" in cfg.notes
