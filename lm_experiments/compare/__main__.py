"""``python -m lm_experiments.compare SWEEP_DIR [--metric acc] [--resamples 1000]``."""

from lm_experiments.compare.report import main

if __name__ == "__main__":
    main()
