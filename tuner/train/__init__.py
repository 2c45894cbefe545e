"""Training: `train(config, stop=...)` yields the events of `tuner.events` while it trains, saves
checkpoints and writes the run's history and metrics.

    from tuner.train import train
    for event in train(TrainConfig(data="demo", out="runs/demo")):
        ...
"""

from ..events import (
                      HISTORY_COLUMNS,
                      PHASES,
                      CheckpointSaved,
                      EpochEnd,
                      Event,
                      Finished,
                      Message,
                      Progress,
                      RunStarted,
                      StageStarted,
)
from .checkpointing import read_history
from .run import merge_resume_config, run_to_end, train

__all__ = ["train", "run_to_end", "merge_resume_config", "read_history", "Event", "RunStarted", "Message",
           "StageStarted", "Progress", "EpochEnd", "CheckpointSaved", "Finished", "HISTORY_COLUMNS", "PHASES"]
