"""Step 3's sampling specification: answers are drawn from --temperature/--top_p/--top_k alone (never
from the checkpoint's generation_config), the log-prob of each drawn token is recorded under the
distribution it was drawn from and equals the teacher-forced one at the row's temperature, and every
stop id the model declares ends an answer."""
from __future__ import annotations

import types

import torch

from utils.generation import SamplingSpec, SampledLogprobs, ignored_generation_settings, sample
from utils.losses import token_logprobs


def tiny_llama(tokenizer, seed: int = 0, **generation):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config).eval()
    for k, v in generation.items():
        setattr(model.generation_config, k, v)
    return model


PROMPTS = ["User: Repeat after me: fox red owl\nAssistant: ", "User: hi\nAssistant: ",
           "User: Repeat after me: cat\nAssistant: ", "User: Count: 1 2 3\nAssistant: "]


def teacher_forced(model, drawn, temps) -> torch.Tensor:
    """[B, N] log-probs of the answer tokens from one forward over the padded sequences, logits / temperature."""
    with torch.no_grad():
        logits = model(input_ids=drawn.sequences, attention_mask=drawn.attention_mask).logits
    return token_logprobs(logits / temps[:, None, None], drawn.sequences)[:, drawn.prompt_len - 1:]


def answer_mask(drawn) -> torch.Tensor:
    return drawn.attention_mask[:, drawn.prompt_len:].bool()


def test_recorded_logprobs_are_the_teacher_forced_ones_whatever_the_generation_config(tokenizer):
    leaky = dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3,
                 suppress_tokens=[tokenizer.eos_token_id + 1], top_k=3)
    model = tiny_llama(tokenizer, **leaky)
    assert ignored_generation_settings(model.generation_config) == leaky
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    temps = torch.tensor([0.7, 0.7, 1.3, 0.5])
    spec = SamplingSpec(12, (tokenizer.eos_token_id,), tokenizer.pad_token_id)
    torch.manual_seed(1)
    drawn = sample(model, ids, spec, temps, device=torch.device("cpu"))
    m = answer_mask(drawn)
    diff = (drawn.logprobs - teacher_forced(model, drawn, temps)).abs()[m]
    assert m.sum() > 20 and float(diff.max()) < 1e-5
    assert torch.equal(drawn.logprobs[~m], torch.zeros(int((~m).sum())))
    # what stock generate does with the same flags: it starts from the model's generation_config, so the
    # tokens come from another distribution than the one their log-probs are scored under
    recorder = SampledLogprobs()
    ids_t = drawn.sequences[:, :drawn.prompt_len]
    torch.manual_seed(1)
    out = model.generate(input_ids=ids_t, attention_mask=drawn.attention_mask[:, :drawn.prompt_len], do_sample=True,
                         temperature=0.7, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                         logits_processor=[recorder])
    stock = types.SimpleNamespace(sequences=out, attention_mask=torch.ones_like(out), prompt_len=drawn.prompt_len)
    stock.attention_mask[:, :drawn.prompt_len] = drawn.attention_mask[:, :drawn.prompt_len]
    warped = recorder.result(out[:, drawn.prompt_len:])    # before transformers' own temperature and top-k
    assert float((warped - teacher_forced(model, stock, torch.ones(4))).abs().max()) > 1e-2


def test_recorded_collision_is_the_teacher_forced_one_at_temperature_1(tokenizer):
    """ESRL's confidence comes from what sampling saw: log sum_v p(v)^2 of the model's own next-token
    distribution at each answer token, before the row's temperature and top-k/top-p, equal to the
    teacher-forced pass at temperature 1 (also on rows drawn at 0.5 and 1.3)."""
    from utils.losses import log_collision

    model = tiny_llama(tokenizer, seed=2)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    spec = SamplingSpec(12, (tokenizer.eos_token_id,), tokenizer.pad_token_id, top_k=20, top_p=0.9)
    torch.manual_seed(4)
    drawn = sample(model, ids, spec, torch.tensor([0.5, 1.0, 1.3, 0.8]), device=torch.device("cpu"), collision=True)
    with torch.no_grad():
        logits = model(input_ids=drawn.sequences, attention_mask=drawn.attention_mask).logits
    want = log_collision(logits[:, drawn.prompt_len - 1:-1])
    m = answer_mask(drawn)
    assert m.sum() > 20 and float((drawn.log_collision - want).abs()[m].max()) < 1e-5
    assert torch.equal(drawn.log_collision[~m], torch.zeros(int((~m).sum())))
    assert sample(model, ids, spec, device=torch.device("cpu")).log_collision is None


def test_top_p_records_the_truncated_distribution(tokenizer):
    """With --top_p the drawn token's recorded log-prob is of the renormalised nucleus: never below
    the full distribution's, above it where the step truncated (what rollout/logprob_diff then shows)."""
    model = tiny_llama(tokenizer, seed=3)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    spec = SamplingSpec(10, (tokenizer.eos_token_id,), tokenizer.pad_token_id, temperature=1.0, top_p=0.5)
    torch.manual_seed(0)
    drawn = sample(model, ids, spec, device=torch.device("cpu"))
    m = answer_mask(drawn)
    gap = (drawn.logprobs - teacher_forced(model, drawn, torch.ones(4)))[m]
    assert float(gap.min()) > -1e-5 and float(gap.max()) > 0.1


def test_every_declared_stop_id_ends_an_answer(tokenizer, tmp_path):
    from training.step3_rlhf.sampler import Sampler
    from utils.losses import kl_penalized_rewards
    from utils.models import load_causal_lm, stop_ids

    model = tiny_llama(tokenizer, seed=5)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    eos = tokenizer.eos_token_id
    free = sample(model, ids, SamplingSpec(8, (eos,), tokenizer.pad_token_id, greedy=True), device="cpu")
    second = free.answers[0][2]                  # the third token row 0 says greedily: a second EOS
    assert second != eos and all(second not in a[:2] for a in free.answers[:1])
    model.generation_config.eos_token_id = [eos, second]
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_causal_lm(str(tmp_path / "m"), tokenizer)
    assert stop_ids(loaded, tokenizer) == (eos, second)
    # a single EOS other than the tokenizer's is the one the tokenizer replaced (--add_eot_token): not a stop
    stale = types.SimpleNamespace(config=types.SimpleNamespace(eos_token_id=second), generation_config=None)
    assert stop_ids(stale, tokenizer) == (eos,)
    assert loaded.generation_config.eos_token_id == [eos, second]    # loading keeps both
    drawn = sample(loaded.eval(), ids, SamplingSpec(8, (eos, second), tokenizer.pad_token_id, greedy=True),
                   device="cpu")
    assert drawn.answers[0] == free.answers[0][:3]                   # stopped on the second id, kept
    for a, f in zip(drawn.answers, free.answers):
        cut = next((i + 1 for i, t in enumerate(f) if t in (eos, second)), len(f))
        assert a == f[:cut]
    maker = types.SimpleNamespace(stops=(eos, second), tok=tokenizer, cfg=types.SimpleNamespace(missing_eos_penalty=-1))
    assert Sampler.has_eos(maker, [drawn.answers[0]]).tolist() == [True]
    # the reward sits on the token it stopped on
    P = drawn.prompt_len
    action = drawn.attention_mask[:, 1:].float()
    action[:, :P - 1] = 0
    rewards, _ = kl_penalized_rewards(torch.zeros_like(action), torch.zeros_like(action), action,
                                      torch.arange(1.0, 5.0), 0.0)
    row = rewards[0]
    assert int(row.nonzero()) == P - 1 + 2 and drawn.sequences[0, P + 2] == second and float(row.sum()) == 1.0
