"""What keeps long runs safe, apart from the models and the data.

* ``compat``: the only module that touches Lightning's and Hydra's private internals, and the
  versions they are known to work with;
* ``signals``: SIGTERM / Ctrl-C -> a resumable checkpoint; ``resume``: what an exact resume
  needs beyond Lightning's own checkpoint;
* ``divergence``: a diverging run stops with one line and keeps its last good checkpoint;
* ``checkpoints``: reading the checkpoint a user points at, the model it holds, atomic writes;
* ``ddp``: DDP under Hydra (sweeps of DDP jobs);
* ``hydra_callbacks``: the multirun's comparison report and a failed job's ``error.txt``.
"""
