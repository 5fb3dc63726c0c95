"""The run folder, atomic file writes and the run log: a failed run never leaves a half-written result, and
log/nbquant.log gets nbquant's messages for as long as a run lasts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

DEFAULT_RUNS_DIR = Path("runs")  # run folders go to runs/<model name> unless a save dir is given
RANKING_FILE = "accuracy_based_auto_calibration_ranking_information.json"
FINAL_CONFIG_FILE = "accuracy_based_auto_calibration_final_config.json"
RECORD_FILE = "accuracy_based_auto_calibration_record.json"
LOG_FORMAT = "%(asctime)s - %(levelname)s - [nbquant]:%(message)s"


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes each of its files, following the reference tool's layout."""

    save_dir: Path
    name: str

    @property
    def results(self) -> Path:
        return self.save_dir / "results"

    @property
    def log_dir(self) -> Path:
        return self.save_dir / "log"

    @property
    def tmp(self) -> Path:
        return self.save_dir / "tmp"

    @property
    def fake_quant_model(self) -> Path:
        return self.results / f"{self.name}_fake_quant_model.onnx"

    @property
    def deploy_model(self) -> Path:
        return self.results / f"{self.name}_deploy_model.onnx"

    @property
    def quant_json(self) -> Path:
        return self.results / f"{self.name}_quant.json"

    @property
    def config(self) -> Path:
        return self.tmp / "config.json"

    @property
    def scale_offset_record(self) -> Path:
        return self.tmp / "scale_offset_record.txt"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "nbquant.log"

    @property
    def evaluation_order(self) -> Path:
        """auto-calibrate: the evaluation images in the order every step runs them."""
        return self.log_dir / "evaluation_order.txt"

    @property
    def ranking(self) -> Path:
        return self.results / RANKING_FILE

    @property
    def final_config(self) -> Path:
        return self.results / FINAL_CONFIG_FILE

    @property
    def record(self) -> Path:
        return self.log_dir / RECORD_FILE

    def make_temp_dir(self) -> Path:
        """A scratch folder for this run (dumps, temp models), removed by the caller at the end."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"temp{time.strftime('%Y%m%d%H%M%S')}_", dir=self.save_dir))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data, indent: int = 4) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Serialize an ONNX model atomically (models up to the 2 GB protobuf limit)."""
    return atomic_write_bytes(path, model.SerializeToString())


def read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def remove_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def log_to_file(path: Path, level: int = logging.INFO):
    """Send the ``nbquant`` logger's records to ``path`` (appending) inside the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("nbquant")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
