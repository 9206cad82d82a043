"""afd: alignment from demonstrations.

Stages, each a function of its config that writes artifacts and ``metrics.json`` into a run
folder (the ``afd`` command and ``afd run`` are thin layers over them):

- data and policies: :func:`afd.sft.sft`, :func:`afd.sampling.sample`, :func:`afd.demonstrate.demonstrate`;
- AfD (METHODS §1): :func:`afd.reward.reward`, :func:`afd.bon.bon`, :func:`afd.eval.evaluate`;
- iterated reward learning (METHODS §2): :func:`afd.rl.rl`, :func:`afd.irl.irl`, :func:`afd.irl.gail`,
  :func:`afd.irft.irft`;
- AVA (METHODS §3): :func:`afd.ava.ava` (and ``reward`` with ``variant`` ava-d / ava-p).

Every reward is read through one interface, :class:`afd.rewards.RewardModel`. See README.md.
"""

__version__ = "0.1.0"
