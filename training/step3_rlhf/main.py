"""Step 3: RLHF with PPO (actor, critic, frozen reference and reward sources).

    python -m training.step3_rlhf.main --actor_model_name_or_path SFT_DIR --critic_model_name_or_path RM_DIR \\
        --data_path PROMPTS --output_dir O
    deepspeed --num_gpus 8 --module training.step3_rlhf.main --actor_zero_stage 3 --critic_zero_stage 3 \\
        --enable_hybrid_engine ...
    ... --reward_functions examples.demo.task:reward --use_reward_model false   # rule reward only

Prompts: SFT records (`output` is the reference answer, used by --add_sft_loss), preference
pairs (`chosen` is the reference) or TRL's prompt(-completion) rows, text or conversational
(utils/data/rlhf.py). Saves
`actor/` (and `critic/`, `actor_ema/`) as HF folders; `--save_steps` + `--resume` continue
a run exactly. build.py loads, rollout.py makes experience, update.py trains on it, recipe.py
owns the loop and its state.
"""
from __future__ import annotations

from training.step3_rlhf.build import build
from training.step3_rlhf.recipe import PPORecipe
from utils.cli import parse_config
from utils.config import RLHFConfig
from utils.run import finish, halts, start, user_errors


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    with user_errors():
        parts = build(cfg)
    recipe = PPORecipe(cfg, parts)
    with halts():
        history = recipe.fit()
        recipe.save()
    finish(cfg.output_dir)
    return {"history": history}


if __name__ == "__main__":
    main()
