from lm_experiments.data.datamodule import LMDataModule
from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX, UNK_ID, Vocabulary

__all__ = ["LMDataModule", "Vocabulary", "EOS_ID", "UNK_ID", "IGNORE_INDEX"]
