"""KTO and RRHF (step 2): losses by hand and against a brute-force loop, their data and collators,
and training end to end (losses fall, desirable / better answers gain on the others). Their lift
of the demo's held-out accuracy over SFT is what `scripts/demo.sh` prints."""
from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import DEMO_DATA, load_weights, read_metrics, run_module, write_jsonl
from utils.data import DataError, read_dataset
from utils.data.feedback import (KTOExample, RankedExample, collate_kto, collate_ranked, pair_for_kl, tokenize_kto,
                                 tokenize_ranked)
from utils.data.encoding import encode_prompts, encode_responses
from utils.losses import IGNORE_INDEX as X
from utils.losses import kto_loss, kto_reference_point, rrhf_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- losses ----------------------------------------------------------------------------------------
def test_kto_loss_by_hand():
    # r = policy - ref = [1, -1]; beta 2, z0 0.5, lambda_D 1, lambda_U 1.5
    # desirable:   1.0 * (1 - sigmoid(2 * (1 - 0.5)))  = 1 - sigmoid(1)
    # undesirable: 1.5 * (1 - sigmoid(2 * (0.5 + 1)))  = 1.5 * (1 - sigmoid(3))
    losses = kto_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), torch.tensor([True, False]),
                      torch.tensor(0.5), beta=2.0, desirable_weight=1.0, undesirable_weight=1.5)
    assert losses.tolist() == pytest.approx([1 - sigmoid(1), 1.5 * (1 - sigmoid(3))], abs=1e-6)
    # policy == reference and z0 = 0: every answer's loss is lambda / 2
    same = kto_loss(torch.tensor([-3.0, -4.0]), torch.tensor([-3.0, -4.0]), torch.tensor([True, False]),
                    torch.tensor(0.0), beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)
    assert same.tolist() == pytest.approx([0.5, 1.0], abs=1e-7)


def test_kto_gradient_raises_desirable_and_lowers_undesirable():
    policy = torch.tensor([-2.0, -2.0], requires_grad=True)
    kto_loss(policy, torch.tensor([-2.0, -2.0]), torch.tensor([True, False]), torch.tensor(0.0), beta=0.5).sum() \
        .backward()
    # d/dr (1 - sigmoid(b r)) at r = 0 is -b/4; for the undesirable answer +b/4
    assert policy.grad.tolist() == pytest.approx([-0.125, 0.125], abs=1e-7)


def test_kto_reference_point_is_a_clamped_mean():
    assert kto_reference_point(3.0, 2) == 1.5
    assert kto_reference_point(-3.0, 2) == 0.0   # KL is never negative
    assert kto_reference_point(0.0, 0) == 0.0


def test_rrhf_loss_by_hand():
    # prompt 0: scores 1, 3, 2 and p = -1, -2, -0.5. Ranked pairs (worse, better):
    #   (0, 1): max(0, -1 + 2) = 1;  (0, 2): max(0, -1 + 0.5) = 0;  (2, 1): max(0, -0.5 + 2) = 1.5  -> 2.5
    #   best is answer 1 (score 3): L_ft = 2
    # prompt 1: equal scores, nothing ranked; best is its first answer (p = -3): L_ft = 3
    total, rank, ft = rrhf_loss(torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.0]),
                                torch.tensor([1.0, 3.0, 2.0, 0.0, 0.0]), [0, 0, 0, 1, 1], rank_weight=0.5)
    assert rank.tolist() == pytest.approx([2.5, 0.0])
    assert ft.tolist() == pytest.approx([2.0, 3.0])
    assert total.tolist() == pytest.approx([0.5 * 2.5 + 2.0, 3.0])


def test_rrhf_loss_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    sizes = [3, 1, 4, 2]
    groups = [k for k, n in enumerate(sizes) for _ in range(n)]
    p = torch.randn(len(groups), generator=g)
    s = torch.randint(0, 3, (len(groups),), generator=g).float()   # ties on purpose
    total, rank, ft = rrhf_loss(p, s, groups, rank_weight=2.0)
    for k in range(len(sizes)):
        rows = [i for i in range(len(groups)) if groups[i] == k]
        want = sum(max(0.0, float(p[i] - p[j])) for i in rows for j in rows if s[i] < s[j])
        best = rows[0]
        for i in rows:
            best = i if s[i] > s[best] else best
        assert float(rank[k]) == pytest.approx(want, abs=1e-6)
        assert float(ft[k]) == pytest.approx(-float(p[best]), abs=1e-7)
        assert float(total[k]) == pytest.approx(2.0 * want - float(p[best]), abs=1e-6)


# -- data --------------------------------------------------------------------------------------------
PROMPT = "User: Repeat after me: fox red owl\nAssistant: "


def records(tmp_path, rows, name="train.jsonl"):
    write_jsonl(tmp_path / "d" / name, rows)
    return read_dataset(str(tmp_path / "d")).train


def test_kto_reads_unpaired_rows_and_splits_pairs(tmp_path, tokenizer):
    rows = [{"prompt": PROMPT, "completion": "fox red owl", "label": True},
            {"prompt": PROMPT, "completion": "fox red", "label": False}]
    ex, stats = tokenize_kto(records(tmp_path, rows), tokenizer, 64)
    (p,) = set(tuple(x) for x in encode_prompts(tokenizer, [PROMPT]))
    good, bad = encode_responses(tokenizer, ["fox red owl", "fox red"])
    assert [(tuple(e.prompt_ids), e.completion_ids, e.desirable) for e in ex] == [(p, good, True), (p, bad, False)]
    assert stats.kept == 2 and stats.dropped == 0
    pairs = [{"prompt": PROMPT, "chosen": "fox red owl", "rejected": "fox red"}]
    split, _ = tokenize_kto(records(tmp_path / "pairs", pairs), tokenizer, 64)
    assert [(e.completion_ids, e.desirable) for e in split] == [(good, True), (bad, False)]


def test_kto_conversational_rows_read_as_chat_pairs_do(tmp_path, tokenizer):
    """TRL's conversational unpaired rows (kto-mix-14k): the same prompt and answer ids as the chat
    pair of those conversations."""
    from utils.data.preference import tokenize_preferences

    user = [{"role": "user", "content": "Repeat after me: fox red owl"}]
    good, bad = [{"role": "assistant", "content": "fox red owl"}], [{"role": "assistant", "content": "fox red"}]
    rows = [{"prompt": user, "completion": good, "label": True}, {"prompt": user, "completion": bad, "label": False}]
    ex, _ = tokenize_kto(records(tmp_path, rows), tokenizer, 64)
    (pair,), _ = tokenize_preferences(records(tmp_path / "pair", [{"chosen": user + good, "rejected": user + bad}]),
                                      tokenizer, 64)
    assert [(e.prompt_ids, e.completion_ids, e.desirable) for e in ex] == \
        [(pair.prompt_ids, pair.chosen_ids, True), (pair.prompt_ids, pair.rejected_ids, False)]
    assert tokenizer.decode(ex[0].completion_ids) == "fox red owl</s>\n"


def test_rrhf_reads_ranked_rows_and_pairs(tmp_path, tokenizer):
    rows = [{"prompt": PROMPT, "responses": ["fox red owl", "fox red", "owl"], "scores": [1.0, 0, -2]}]
    (e,), _ = tokenize_ranked(records(tmp_path, rows), tokenizer, 64)
    assert e.responses == encode_responses(tokenizer, ["fox red owl", "fox red", "owl"])
    assert e.scores == [1.0, 0.0, -2.0]
    pairs = [{"prompt": PROMPT, "chosen": "a b", "rejected": "c"},
             {"prompt": PROMPT, "chosen": "a", "rejected": "b", "chosen_score": 0.25, "rejected_score": 0.5}]
    ex, _ = tokenize_ranked(records(tmp_path / "pairs", pairs), tokenizer, 64)
    assert [x.scores for x in ex] == [[1.0, 0.0], [0.25, 0.5]]   # score columns when given


BAD = [
    ("kto", [{"prompt": "p", "completion": "a", "label": "yes"}], ':1: field "label" must be true or false'),
    ("kto", [{"prompt": "p", "completion": "a"}], ":1: missing column(s) label; expected prompt, completion"),
    ("kto", [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "p", "chosen": "a", "rejected": "b"}],
     ":2: missing column(s) completion, label"),
    ("kto", [{"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "a"}],
              "label": True}, {"prompt": "p", "completion": "a", "label": False}],
     ':2: field "prompt" must be a non-empty list'),
    ("rrhf", [{"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}],
     ':1: field "scores" must be a list of 2 numbers'),
    ("rrhf", [{"prompt": "p", "responses": ["a", "b"], "scores": [1.0, float("nan")]}],
     ':1: field "scores" item 1 must be a finite number'),
    ("rrhf", [{"prompt": "p", "responses": ["a", "b"], "scores": [1, 2], "extra": 1}],
     ":1: unknown column(s) extra"),
]


@pytest.mark.parametrize("kind,rows,expected", BAD)
def test_bad_rows_one_line(tmp_path, tokenizer, kind, rows, expected):
    tokenize = tokenize_kto if kind == "kto" else tokenize_ranked
    with pytest.raises(DataError) as e:
        tokenize(records(tmp_path, rows), tokenizer, 64)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_kto_collator_exact_tensors():
    a = KTOExample([1, 2], [5, 9], True, kl_ids=[7, 8, 9], ref_logp=-1.0, ref_kl_logp=-2.0)
    b = KTOExample([1], [6, 6, 9], False, kl_ids=[5, 9], ref_logp=-3.0, ref_kl_logp=-4.0)
    batch = collate_kto([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 5, 9, 0], [1, 6, 6, 9, 0], [1, 2, 7, 8, 9], [1, 5, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.labels.tolist() == [[X, X, 5, 9, X], [X, 6, 6, 9, X], [X, X, 7, 8, 9], [X, 5, 9, X, X]]
    assert batch.desirable.tolist() == [True, False] and batch.n == 2
    assert batch.ref_logps.tolist() == [-1.0, -3.0, -2.0, -4.0]


def test_ranked_collator_exact_tensors():
    batch = collate_ranked([RankedExample([1], [[5, 9], [6, 9], [9]], [0.0, 2.0, 1.0]),
                            RankedExample([1, 3], [[7, 9], [9]], [1.0, 0.0])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 9, 0], [1, 6, 9, 0], [1, 9, 0, 0], [1, 3, 7, 9], [1, 3, 9, 0]]
    assert batch.labels.tolist() == [[X, 5, 9, X], [X, 6, 9, X], [X, 9, X, X], [X, X, 7, 9], [X, X, 9, X]]
    assert batch.groups == [0, 0, 0, 1, 1] and batch.n_prompts == 2
    assert batch.scores.tolist() == [0.0, 2.0, 1.0, 1.0, 0.0]


def test_kl_pairs_are_another_rows_completion_fixed_by_the_seed():
    def examples():
        return [KTOExample([1] * (1 + i % 3), [10 + i] * 4, i % 2 == 0) for i in range(7)]

    one, two = examples(), examples()
    pair_for_kl(one, max_len=6, seed=3)
    pair_for_kl(two, max_len=6, seed=3)
    assert [e.kl_ids for e in one] == [e.kl_ids for e in two]
    donors = [e.kl_ids[0] - 10 for e in one]
    assert sorted(donors) == list(range(7)) and all(d != i for i, d in enumerate(donors))   # a derangement
    assert all(len(e.prompt_ids) + len(e.kl_ids) <= 6 for e in one)    # cut to fit beside the prompt
    assert [len(e.kl_ids) for e in one] == [min(4, 6 - len(e.prompt_ids)) for e in one]


# -- end to end ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    """600 training and 40 held-out demo pairs."""
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    out.mkdir()
    rows = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist(rows[:600]), out / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[600:640]), out / "test.parquet")
    return out


def step2_args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--learning_rate", "5e-4", "--num_train_epochs", "1", "--logging_steps", "5", "--disable_tqdm",
            "--lr_scheduler_type", "constant", "--seed", "5", *map(str, extra)]


@pytest.mark.slow
def test_kto_from_pairs_learns_at_two_processes(sft_dir, demo_pairs, tmp_path):
    """At two processes (ZeRO-2): the reference point is reduced over both."""
    out = tmp_path / "kto"
    p = run_module("training.step2_dpo.main", step2_args(sft_dir, demo_pairs, out, "--loss_type", "kto",
                                                         "--zero_stage", 2, "--per_device_train_batch_size", 4),
                   nproc=2)
    assert "reference log-probs precomputed for 1280 answers" in p.stdout    # 640 pairs split in two
    evals = [m for m in read_metrics(out) if "eval/loss" in m]
    # step 0: policy == reference, so r = 0 and z0 = 0 on every answer: loss = 1 - sigmoid(0) = 0.5
    assert evals[0]["eval/loss"] == pytest.approx(0.5, abs=1e-6) and evals[0]["eval/kl"] == 0.0
    assert evals[-1]["eval/loss"] < 0.45
    # beta r of held-out desirable answers ends well above that of undesirable ones
    assert evals[-1]["eval/rewards/chosen"] > evals[-1]["eval/rewards/rejected"] + 0.5
    initial, trained = load_weights(sft_dir), load_weights(out)
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)


@pytest.mark.slow
def test_rrhf_from_ranked_rows_learns(sft_dir, tmp_path):
    from examples.demo.task import correct_answer, wrong_answer

    rng = random.Random(0)
    prompts = [json.loads(line)["instruction"]
               for line in (DEMO_DATA / "rlhf" / "train.txt").read_text().splitlines()[:240]]

    def row(p):
        words = correct_answer(p).split()
        answers = [(correct_answer(p), 2.0), (wrong_answer(p), 0.0), (" ".join(words[1:]), -1.0)]
        rng.shuffle(answers)
        return {"prompt": p, "responses": [a for a, _ in answers], "scores": [s for _, s in answers]}

    data = tmp_path / "ranked"
    write_jsonl(data / "train.jsonl", [row(p) for p in prompts[:200]])
    write_jsonl(data / "test.jsonl", [row(p) for p in prompts[200:]])
    out = tmp_path / "rrhf"
    run_module("training.step2_dpo.main", step2_args(sft_dir, data, out, "--loss_type", "rrhf",
                                                     "--per_device_train_batch_size", 4))
    evals = [m for m in read_metrics(out) if "eval/loss" in m]
    assert evals[-1]["eval/rank_loss"] < 0.5 * evals[0]["eval/rank_loss"]
    assert evals[-1]["eval/rewards/accuracy"] > max(0.9, evals[0]["eval/rewards/accuracy"])
    assert evals[-1]["eval/sft_loss"] < evals[0]["eval/sft_loss"]
    initial, trained = load_weights(sft_dir), load_weights(out)
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)


def test_kto_and_rrhf_flag_checks(tmp_path):
    def err(*extra):
        return run_module("training.step2_dpo.main", ["--model_name_or_path", "m", "--data_path", "d",
                                                      "--output_dir", str(tmp_path / "o"), *extra], check=False)

    p = err("--loss_type", "kto", "--rpo_alpha", "0.3")
    assert p.returncode == 2 and p.stderr.strip() == ("error: --rpo_alpha needs preference pairs; --loss_type kto "
                                                      "has none (rrhf has its own SFT term)")
    p = err("--loss_type", "kto", "--undesirable_loss_weight", "0")
    assert p.returncode == 2 and "--undesirable_weight must be > 0" in p.stderr
