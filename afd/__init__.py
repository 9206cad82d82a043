"""afd: alignment from demonstrations.

Stages (each a function of a config that writes artifacts and ``metrics.json`` into a run
folder): :func:`afd.sft.sft`, :func:`afd.sampling.sample`. See README.md.
"""

__version__ = "0.1.0"
