"""A run shared by several hosts: what a worker needs to join it lives in the run's storage and artifact store.

The storage (``tune --storage postgresql://...``) holds, besides the rounds' studies, a study ``<name>/run`` whose
user attributes are the run's record: its configuration, the export format, the original's values and thresholds,
the round that is open and whether the run is finished. The original artifact and every round's base model travel
through Optuna's artifact store (a folder every host sees, or S3); their ids are in the same record. The host that
started the run (``tune``) writes the record; workers (``edgecompress worker``) only read it. Nothing else is shared:
no server of our own.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, download_artifact, upload_artifact

from edgecompress.errors import ConfigError

RUN_STUDY = "{name}/run"
# How often a worker looks at the run's record while it waits (for the run to start, for the next round).
POLL_S = 2.0


def artifact_store(spec: str) -> Any:
    """Optuna's artifact store for ``spec``: ``s3://bucket`` (boto3, credentials from the environment) or a folder."""
    if spec.startswith("s3://"):
        bucket = spec.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"artifact store {spec}: give s3://BUCKET (Optuna's S3 store takes a bucket, no prefix)")
        try:
            import boto3  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ConfigError(f"artifact store {spec} needs boto3: pip install boto3") from None
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    folder = Path(spec).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


class SharedRun:
    """The run's record in a shared storage, and its artifacts."""

    def __init__(self, study: optuna.Study, store: Any):
        self.study = study
        self.store = store

    @classmethod
    def create(cls, storage: str | optuna.storages.BaseStorage, name: str, artifacts: str) -> SharedRun:
        study = optuna.create_study(study_name=RUN_STUDY.format(name=name), storage=storage, load_if_exists=True)
        run = cls(study, artifact_store(artifacts))
        run.study.set_user_attr("artifacts", artifacts)
        return run

    @classmethod
    def join(
        cls,
        storage: str | optuna.storages.BaseStorage,
        name: str,
        artifacts: str | None,
        wait_s: float,
        on_event: Callable[[str], None],
    ) -> SharedRun:
        """The run named ``name`` once its record holds the original (waits up to ``wait_s`` for the run to get
        there); ``artifacts`` overrides the store the run names (the same store, seen from this host)."""
        waited_from, said = time.monotonic(), False
        while True:
            try:
                study = optuna.load_study(study_name=RUN_STUDY.format(name=name), storage=storage)
            except KeyError:
                study = None
            if study is not None and "original" in study.user_attrs:
                store = artifacts or study.user_attrs.get("artifacts")
                if not store:
                    raise ConfigError(f"run {name} names no artifact store; give --artifacts")
                return cls(study, artifact_store(store))
            if time.monotonic() - waited_from > wait_s:
                names = [s.study_name.removesuffix("/run") for s in optuna.get_all_study_summaries(storage)]
                known = ", ".join(n for n in names if "/round-" not in n) or "none"
                raise ConfigError(
                    f"no run {name} with a measured original in the storage after {wait_s:.0f} s; runs there: {known}"
                )
            if not said:
                on_event(f"waiting for run {name} to measure its original")
                said = True
            time.sleep(POLL_S)

    @property
    def record(self) -> dict[str, Any]:
        return self.study.user_attrs

    def put(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def upload(self, key: str, path: Path) -> None:
        """Put a file into the artifact store under ``key`` (once: a resumed run does not upload it again)."""
        if f"artifact:{key}" in self.record:
            return
        artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=self.study)
        self.put(f"artifact:{key}", artifact_id)

    def download(self, key: str, folder: Path) -> Path:
        artifact_id = self.record.get(f"artifact:{key}")
        if artifact_id is None:
            raise ConfigError(f"the run's record has no {key}")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / key
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as part:
            pass
        Path(part.name).unlink()
        download_artifact(artifact_store=self.store, artifact_id=artifact_id, file_path=part.name)
        Path(part.name).replace(path)
        return path

    def wait_for_round(self, t: int, on_event: Callable[[str], None]) -> int | None:
        """Wait until round t (or a later one) is open; its index, or None when the run's search is over."""
        said = False
        while True:
            record = self.record
            if record.get("status") == "finished" or record.get("searched"):
                return None
            if record.get("round", -1) >= t:
                return int(record["round"])
            if not said:
                on_event(f"waiting for round {t + 1} to open (the run's host fine-tunes the last round's choice)")
                said = True
            time.sleep(POLL_S)
