"""afd's RL step subclasses TRL's RLOOTrainer and overrides a few of its private methods
(afd/rl.py): afd's sampler in place of ``_generate_single_turn``, and the dense-reward path's
``_get_per_token_logps_and_entropies``, ``_generate_and_score_completions`` and ``_compute_loss``.
pyproject pins TRL to the range these were tested with; this test fails when a TRL release
drops or reshapes one of them, before a user's RL run does."""

import inspect

import pytest


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_trl_methods_afd_overrides_are_there_with_the_arguments_it_passes():
    from trl import RLOOTrainer

    assert params(RLOOTrainer._generate_single_turn)[:4] == ["self", "prompt_ids", "images", "multimodal_fields"]
    assert params(RLOOTrainer._get_per_token_logps_and_entropies)[:6] == [
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size"]
    assert params(RLOOTrainer._generate_and_score_completions)[:2] == ["self", "inputs"]
    assert params(RLOOTrainer._compute_loss)[:3] == ["self", "model", "inputs"]
    # afd's overrides are called by TRL itself (not only defined beside it)
    source = inspect.getsource(RLOOTrainer)
    for call in ("self._generate_single_turn(", "self._get_per_token_logps_and_entropies(",
                 "self._generate_and_score_completions(", "self._compute_loss("):
        assert call in source, call


@pytest.mark.parametrize("attribute", ["_dist", "_tokenizer", "_metrics", "beta", "eos_token_ids",
                                       "max_completion_length", "epsilon_low", "epsilon_high", "normalize_advantages",
                                       "num_generations", "ref_model", "min_p", "repetition_penalty", "use_vllm",
                                       "top_k", "top_p", "temperature"])
def test_the_trl_attributes_afd_reads_are_set_by_the_trainer(attribute):
    from trl import RLOOTrainer

    assert f"self.{attribute} =" in inspect.getsource(RLOOTrainer.__init__) or \
        f"self.{attribute}" in inspect.getsource(RLOOTrainer), attribute
