"""Step 2: preference data validation, reward model scoring, RM and DPO training end to end."""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import DEMO_DATA, FIXTURES, in_fresh_process, load_weights, read_metrics, recording, run_module
from utils.data import DataError, read_dataset
from utils.data.preference import collate_preferences, tokenize_preferences

PROMPT = "User: Repeat after me: fox red owl\nAssistant: "


def write_parquet(folder, rows, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")
    return folder


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    """600 training and 40 held-out demo pairs."""
    out = tmp_path_factory.mktemp("pref") / "pairs"
    train = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()
    write_parquet(out, train[:600])
    write_parquet(out, train[600:640], "test")
    return out


# -- data -----------------------------------------------------------------------------------------
BAD = [
    ("missing_column", [{"prompt": "p", "chosen": "a"}], "row 0: missing column(s) rejected"),
    ("nan_score", [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 1.0, "rejected_score": math.nan}],
     'row 0: field "rejected_score" is nan'),
    ("unknown_column", [{"prompt": "p", "good": "a", "bad": "b"}], "row 0: unknown column(s) bad, good"),
    ("string_score", [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_gpt_score": "high",
                       "rejected_gpt_score": 0.1}], 'field "chosen_gpt_score" must be a number, got str'),
    ("margin_on_point", [{"prompt": "p", "response": "a", "score": 1.0, "margin": 1.0}],
     "row 0: a margin needs a pair (chosen, rejected)"),
    ("null_margin", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0},
                     {"prompt": "p", "chosen": "a", "rejected": "b", "margin": None}], 'row 1: field "margin" is missing'),
    ("string_margin", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}],
     'row 0: field "margin" must be a number, got str'),
]


@pytest.mark.parametrize("name,rows,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_preference_rows(tmp_path, tokenizer, name, rows, expected):
    folder = write_parquet(tmp_path / name, rows)
    with pytest.raises(DataError) as e:
        tokenize_preferences(read_dataset(str(folder)).train, tokenizer, 64)
    assert str(e.value).startswith(str(folder / "train.parquet")) and expected in str(e.value), str(e.value)


def test_empty_split_is_an_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()),
                             "rejected": pa.array([], pa.string())}), folder / "train.parquet")
    with pytest.raises(DataError, match=r"train.parquet: file is empty \(no rows\)"):
        read_dataset(str(folder))


def test_fork_files_read_unchanged(tokenizer):
    folder = FIXTURES / "fork-parquet" / "training_reward_with_scores"
    if not folder.exists():
        pytest.skip("shared fixtures not present")
    ex, _ = tokenize_preferences(read_dataset(str(folder)).train, tokenizer, 4096, need_scores=True)
    assert len(ex) == 250 and ex[0].chosen_score == 0.9 and ex[0].rejected_score == 0.2


def test_preference_collator_exact_tensors():
    from utils.data.preference import PreferenceExample

    b = collate_preferences([PreferenceExample([1, 9], [5, 2], [6, 7, 2], 0.5, 0.25, margin=1.5),
                             PreferenceExample([1], [8, 2], None, 3.0)], pad_id=3)
    assert b.n_pairs == 1 and b.margin.tolist() == [1.5]
    assert torch.equal(b.input_ids, torch.tensor([[1, 9, 5, 2, 3], [1, 9, 6, 7, 2], [1, 8, 2, 3, 3]]))
    assert torch.equal(b.labels, torch.tensor([[-100, -100, 5, 2, -100], [-100, -100, 6, 7, 2],
                                               [-100, 8, 2, -100, -100]]))
    assert b.score_target.tolist() == [0.5, 0.25, 3.0]
    assert b.lengths.tolist() == [4, 5, 3]


def test_margins_are_read_for_both_encodings(tmp_path, tokenizer):
    folder = write_parquet(tmp_path / "m", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1},
                                            {"prompt": "p", "chosen": "c", "rejected": "d", "margin": 2.5}])
    for joint in (False, True):
        ex, _ = tokenize_preferences(read_dataset(str(folder)).train, tokenizer, 64, joint=joint)
        assert [e.margin for e in ex] == [1.0, 2.5]


def test_chat_pairs_share_the_prompt(tokenizer):
    from utils.data.readers import Record

    user = {"role": "user", "content": "Repeat after me: fox red"}
    rec = Record("f", ":1", {"chosen": [user, {"role": "assistant", "content": "fox red"}],
                             "rejected": [user, {"role": "assistant", "content": "fox"}]})
    (ex,), _ = tokenize_preferences([rec], tokenizer, 64)
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ex.prompt_ids) == prompt
    assert tokenizer.decode(ex.chosen_ids) == "fox red</s>\n" and tokenizer.decode(ex.rejected_ids) == "fox</s>\n"


# -- reward model scoring ---------------------------------------------------------------------------
def test_explicit_prompt_chat_pairs_equal_whole_conversations(tokenizer):
    """TRL's explicit-prompt form ({"prompt": turns, "chosen": [answer], "rejected": [answer]}) reads
    as the whole conversations do, for DPO, the reward model and step 1; the prompt's turns are not lost."""
    from utils.data.preference import tokenize_chosen
    from utils.data.readers import Record

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat after me: fox red"}]
    good, bad = {"role": "assistant", "content": "fox red"}, {"role": "assistant", "content": "owl"}
    whole = Record("f", ":1", {"chosen": turns + [good], "rejected": turns + [bad]})
    explicit = Record("g", ":1", {"prompt": turns, "chosen": [good], "rejected": [bad]})
    for joint in (False, True):
        (a,), _ = tokenize_preferences([whole], tokenizer, 96, joint=joint)
        (b,), _ = tokenize_preferences([explicit], tokenizer, 96, joint=joint)
        assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
    assert "Repeat after me" in tokenizer.decode(b.chosen_ids)   # joint: the whole rendered conversation
    (a,), _ = tokenize_chosen([whole], tokenizer, 96)
    (b,), _ = tokenize_chosen([explicit], tokenizer, 96)
    assert a.input_ids == b.input_ids and a.labels == b.labels
    bad_turn = Record("h", ":3", {"prompt": [{"role": "robot", "content": "x"}], "chosen": [good], "rejected": [bad]})
    with pytest.raises(DataError, match=r"^h:3: prompt\[0\]\.role must be system, user or assistant, got 'robot'$"):
        tokenize_preferences([bad_turn], tokenizer, 96)


def test_score_ignores_right_padding_and_matches_stock_pooling(tiny_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from utils.models import end_scores, token_values

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1).eval()
    ids = tokenizer([PROMPT + "fox red owl", PROMPT + "fox"], padding=True, return_tensors="pt")
    with torch.no_grad():
        s = end_scores(token_values(model, ids.input_ids, ids.attention_mask), ids.attention_mask)
        stock = model(**ids).logits.squeeze(-1)
        pad = torch.full((2, 7), tokenizer.pad_token_id)
        longer_ids = torch.cat([ids.input_ids, pad], 1)
        longer_mask = torch.cat([ids.attention_mask, torch.zeros_like(pad)], 1)
        s_padded = end_scores(token_values(model, longer_ids, longer_mask), longer_mask)
    torch.testing.assert_close(s, stock, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, s_padded, atol=1e-6, rtol=0)
    assert abs(s[0] - s[1]) > 1e-6


def rm_args(tiny_dir, data, out, *extra):
    return ["--model_name_or_path", str(tiny_dir), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--learning_rate", "1e-3", "--num_train_epochs", "2", "--logging_steps", "5", "--disable_tqdm",
            "--seed", "3", *map(str, extra)]


def test_reward_model_learns_and_reloads_with_same_scores(sft_dir, pref_data, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.step2_reward.rw_eval import score

    out = tmp_path / "rm"
    run_module("training.step2_reward.main", rm_args(sft_dir, pref_data, out))
    evals = [m for m in read_metrics(out) if "eval/accuracy" in m]
    # 40 held-out pairs: one pair is 0.025
    assert evals[-1]["eval/accuracy"] >= max(0.7, evals[0]["eval/accuracy"] + 0.15)
    assert evals[-1]["eval/loss"] < 0.6 * evals[0]["eval/loss"]
    assert (out / "training_curves.png").stat().st_size > 0

    before, after = load_weights(sft_dir), load_weights(out)
    backbone = [k for k in before if k != "lm_head.weight"]
    assert all(not torch.equal(before[k], after[k]) for k in backbone)
    from utils.models import load_reward_model

    init_head = load_reward_model(str(sft_dir), tokenizer).score.weight.detach()
    assert init_head.abs().sum() > 0 and not torch.equal(init_head, after["score.weight"])

    # stock reload: mean chosen score over the held-out pairs equals what training logged
    rm = AutoModelForSequenceClassification.from_pretrained(out).eval()
    test = pq.read_table(pref_data / "test.parquet").to_pylist()
    chosen = score(rm, tokenizer, [r["prompt"] for r in test], [r["chosen"] for r in test])
    assert sum(chosen) / len(chosen) == pytest.approx(evals[-1]["eval/chosen_score"], abs=1e-4)
    with torch.no_grad():  # and the saved tokenizer with stock pooling gives the same number
        stock_tok = AutoTokenizer.from_pretrained(out)
        ids = stock_tok(test[0]["prompt"] + test[0]["chosen"], return_tensors="pt")
        assert ids.input_ids[0, -1] == tokenizer.eos_token_id
        assert rm(**ids).logits.item() == pytest.approx(chosen[0], abs=1e-5)


def test_reward_from_scores_mse_falls(sft_dir, tmp_path):
    rows = []
    for r in pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()[:160]:
        rows.append({**r, "chosen_gpt_score": 0.9, "rejected_gpt_score": 0.2})
    data = write_parquet(tmp_path / "scored", rows[:128])
    write_parquet(data, rows[128:], "test")
    points = write_parquet(tmp_path / "points", [{"prompt": r["prompt"], "response": r["chosen"], "score": 0.9}
                                                 for r in rows[:64]])
    out = tmp_path / "rm_scores"
    p = run_module("training.step2_reward.main", rm_args(sft_dir, data, out, "--gpt_annotated_score",
                                                         "--data_path", data, points))
    assert "[data] 192 training and 32 held-out examples with scores" in p.stdout  # 128 pairs + 64 points
    mse = [m["eval/mse"] for m in read_metrics(out) if "eval/mse" in m]
    assert mse[-1] < 0.5 * mse[0]
    out2 = tmp_path / "rm_mixed"
    run_module("training.step2_reward.main", rm_args(sft_dir, data, out2, "--rm_loss", "mixed",
                                                     "--pairwise_reduction", "divergence", "--num_train_epochs", 1))
    m = [r for r in read_metrics(out2) if "eval/mse" in r]
    assert m[-1]["eval/mse"] < m[0]["eval/mse"] and m[-1]["eval/accuracy"] >= m[0]["eval/accuracy"]


def test_reward_margin_and_centering(sft_dir, tmp_path):
    """TRL's `margin` column and --center_rewards_coefficient: the first evaluation's loss is the
    hand-derived mean of softplus(m - (r_c - r_r)) + C (r_c + r_r)^2 (the untrained head scores every
    answer nearly alike), and the centred run keeps the mean score near 0 where the plain one drifts."""
    train = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()[:640]
    rows = [{**r, "margin": 1.0 + 0.5 * (i % 3)} for i, r in enumerate(train)]
    data = write_parquet(tmp_path / "margins", rows[:600])
    write_parquet(data, rows[600:], "test")
    margins = [r["margin"] for r in rows[600:]]
    runs = {}
    for name, coef in (("plain", 0.0), ("centred", 0.1)):
        out = tmp_path / name
        extra = ["--center_rewards_coefficient", coef] if coef else []
        run_module("training.step2_reward.main", rm_args(sft_dir, data, out, "--num_train_epochs", 1,
                                                         "--eval_steps", 25, *extra))
        evals = runs[name] = [m for m in read_metrics(out) if "eval/accuracy" in m]
        first = evals[0]
        assert first["step"] == 0 and first["eval/score_std"] < 0.05
        c, r = first["eval/chosen_score"], first["eval/rejected_score"]
        want = sum(math.log1p(math.exp(m - (c - r))) for m in margins) / len(margins) + coef * (c + r) ** 2
        assert first["eval/loss"] == pytest.approx(want, abs=5e-4)   # C (r_c + r_r)^2 is 2.4e-3 here
        assert evals[-1]["eval/chosen_score"] - evals[-1]["eval/rejected_score"] > 0.5
        assert evals[-1]["eval/loss"] < 0.85 * first["eval/loss"]
    drift = {k: max(abs(m["eval/score_mean"]) for m in v[1:]) for k, v in runs.items()}
    assert drift["plain"] > 0.5 and drift["centred"] < 0.25 * drift["plain"], drift


def test_reward_cli_bad_column_one_line(tiny_dir, tmp_path):
    data = write_parquet(tmp_path / "bad", [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 1.0}])
    out = tmp_path / "never"
    p = run_module("training.step2_reward.main", rm_args(tiny_dir, data, out, "--rm_loss", "score"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and not out.exists()
    assert p.stderr.strip().splitlines()[-1] == f'error: {data / "train.parquet"} row 0: field "rejected_score" is missing'


# -- DPO ----------------------------------------------------------------------------------------------
def dpo_args(tiny_dir, data, out, *extra):
    return ["--model_name_or_path", str(tiny_dir), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--learning_rate", "5e-4", "--num_train_epochs", "1", "--logging_steps", "5", "--disable_tqdm",
            "--lr_scheduler_type", "constant", "--seed", "5", *map(str, extra)]


def changed_reference_parameters(argv, initial_dir) -> list[str]:
    """Run DPO (in a fresh process) and list reference parameters that differ from the start."""
    import training.step2_dpo.main as dpo

    built = recording(dpo, "build_reference")
    dpo.main(argv)
    initial = load_weights(initial_dir)
    return [n for n, p in built[0].module.named_parameters() if not torch.equal(p, initial[n])]


def test_dpo_trains_policy_and_leaves_reference_unchanged(sft_dir, pref_data, tmp_path):
    out = tmp_path / "dpo"
    argv = dpo_args(sft_dir, pref_data, out, "--precompute_ref_log_probs", "false")  # the reference stays live
    assert in_fresh_process(changed_reference_parameters, argv, sft_dir) == []
    initial = load_weights(sft_dir)
    trained = load_weights(out)
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)
    evals = [m for m in read_metrics(out) if "eval/rewards/accuracy" in m]
    assert evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.05
    assert evals[-1]["eval/rewards/accuracy"] > 0.6 and evals[-1]["eval/rewards/margin"] > 0
    assert (out / "training_curves.png").stat().st_size > 0


def test_precomputed_reference_equals_live_reference(sft_dir, pref_data, tmp_path):
    live, pre = tmp_path / "live", tmp_path / "pre"
    run_module("training.step2_dpo.main", dpo_args(sft_dir, pref_data, live, "--max_steps", 5,
                                                   "--precompute_ref_log_probs", "false"))
    p = run_module("training.step2_dpo.main", dpo_args(sft_dir, pref_data, pre, "--max_steps", 5,
                                                       "--precompute_ref_log_probs"))
    assert "reference log-probs precomputed" in p.stdout
    # the reference log-probs agree to float32 rounding (other batch shapes); Adam scales such
    # differences on rarely-updated rows up to ~1e-6 in five steps, where a misaligned reference
    # moves weights by the whole update (~1e-4)
    wl, wp = load_weights(live), load_weights(pre)
    for k in wl:
        torch.testing.assert_close(wl[k], wp[k], atol=5e-6, rtol=0, msg=k)
    losses = [[r["train/loss"] for r in read_metrics(d) if "train/loss" in r] for d in (live, pre)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_reference_precomputed_by_default_only_when_every_example_is_trained_on():
    from training.step2_dpo.reference import covers_every_example
    from utils.cli import parse_config
    from utils.config import DPOConfig

    def cfg(*extra):
        return parse_config(DPOConfig, ["--model_name_or_path", "m", "--data_path", "d", "--output_dir", "o",
                                        "--per_device_train_batch_size", "8", *extra])

    assert covers_every_example(cfg(), 100)                          # one epoch: 13 steps of 8
    assert covers_every_example(cfg("--max_steps", "13"), 100)       # 104 pairs >= 100
    assert not covers_every_example(cfg("--max_steps", "12"), 100)   # 96 pairs: 4 never trained on
    # 13 micro-batches make 6 windows of 2: the 13th batch (4 pairs) is never trained on
    assert not covers_every_example(cfg("--gradient_accumulation_steps", "2"), 100)
    assert covers_every_example(cfg("--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "10"), 100)
    assert cfg().precompute_ref_log_probs is None and cfg("--precompute_ref_log_probs").precompute_ref_log_probs


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_dpo_relatives_learn(sft_dir, pref_data, tmp_path, loss):
    out = tmp_path / loss
    beta = {"ipo": "0.5", "simpo": "2.0", "orpo": "0.5"}[loss]
    run_module("training.step2_dpo.main", dpo_args(sft_dir, pref_data, out, "--loss_type", loss, "--beta", beta))
    evals = [m for m in read_metrics(out) if "eval/rewards/accuracy" in m]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert evals[-1]["eval/rewards/margin"] > evals[0]["eval/rewards/margin"]


def test_two_process_zero3_reward_and_dpo(tiny_dir, sft_dir, pref_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    rm, dpo = tmp_path / "rm2", tmp_path / "dpo2"
    run_module("training.step2_reward.main", rm_args(sft_dir, pref_data, rm, "--zero_stage", 3,
                                                     "--per_device_train_batch_size", 4), nproc=2)
    evals = [m for m in read_metrics(rm) if "eval/accuracy" in m]
    assert evals[-1]["eval/accuracy"] >= max(0.7, evals[0]["eval/accuracy"] + 0.15)
    assert evals[-1]["eval/loss"] < 0.6 * evals[0]["eval/loss"]
    AutoModelForSequenceClassification.from_pretrained(rm)
    p = run_module("training.step2_dpo.main", dpo_args(sft_dir, pref_data, dpo, "--zero_stage", 3,
                                                       "--reference_zero_stage", 3, "--per_device_train_batch_size", 4),
                   nproc=2)
    # by default the reference is precomputed, each rank scoring a share, the test split in the
    # very batches evaluation forms: at step 0 policy == reference exactly
    assert "reference log-probs precomputed" in p.stdout
    evals = [m for m in read_metrics(dpo) if "eval/rewards/accuracy" in m]
    assert evals[0]["eval/rewards/margin"] == 0.0 and evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] and evals[-1]["eval/rewards/margin"] > 0
    initial, trained = load_weights(sft_dir), load_weights(dpo)
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)
    AutoModelForCausalLM.from_pretrained(dpo)


def test_reward_on_a_blend_of_scored_and_unscored_rows_at_two_processes(sft_dir, pref_data, tmp_path):
    """Most windows hold no scored row on one rank or on both: the metrics reduce over the union of
    the ranks' keys, so neither rank waits on a reduction the other never joins."""
    rows = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()
    scored = write_parquet(tmp_path / "scored", [{**r, "chosen_score": 0.9, "rejected_score": 0.1}
                                                 for r in rows[:6]])
    out = tmp_path / "blend"
    run_module("training.step2_reward.main", rm_args(sft_dir, pref_data, out, "--data_path", pref_data, scored,
                                                     "--num_train_epochs", 1, "--logging_steps", 1,
                                                     "--per_device_train_batch_size", 4, "--max_steps", 30),
               nproc=2, timeout=300)
    train = [m for m in read_metrics(out) if "train/loss" in m]
    with_mse = [m for m in train if "train/mse" in m]
    assert len(train) == 30 and 0 < len(with_mse) < len(train)
    assert all(math.isfinite(m["train/mse"]) for m in with_mse)
