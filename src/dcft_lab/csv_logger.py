"""A CSVLogger whose metrics.csv survives a resume.

Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run would keep only its last
attempt's rows. This one keeps the earlier rows logged before the checkpoint's step (the resumed run logs the later
ones again, identically), giving one file with the whole run.
"""

from __future__ import annotations

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class ContinuedCSVLogger(CSVLogger):
    def __init__(self, *args, keep_rows_before_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._keep_before = keep_rows_before_step

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or self._keep_before is None:
            return super().experiment
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        kept, header = [], []
        if os.path.isfile(path):
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                header = list(reader.fieldnames or [])
                # "step" is Lightning's 0-based logging step: rows of steps < the checkpoint's global step are done
                kept = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) < self._keep_before]
        writer = super().experiment  # deletes the old file
        if kept:
            with open(writer.metrics_file_path, "w", newline="") as file:
                out = csv.DictWriter(file, fieldnames=header)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = header  # later rows append; new keys rewrite the header (Lightning's own logic)
        return writer
