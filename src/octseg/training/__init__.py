"""Training: data and samplers (``data``), the LightningModule (``module``), optimisers and
schedules by name (``optim``), the run folder and trainer (``run.train``), learning curves
(``curves``). Nothing here knows a method by name."""
