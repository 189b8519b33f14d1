"""``Registry`` over a real MLflow SQLite store, with real logged lmrec models.

Covers idempotent registration by digest, promote / rollback sequences and their
idempotence, the errors when there is nothing to promote or roll back, the challenger
alias never landing on the champion, downloading a version back into a loadable lmrec model
(a refit version's served refit and its evaluated candidate), and ``model_digest``.

Creating the SQLite store and logging the first model take a few seconds, so one store with
three logged models is shared by the module; each test gets its own registered model name,
which keeps the tests independent of each other and of their order.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.artifacts import ITEM_IDS_FILE
from lmrec.features.dataset import SplitData
from lmrec.io import LmrecError
from lmrec.models.base import Recommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.random import RandomParams, RandomRecommender
from lmrec.models.registry import load_model
from lmrec.registry.store import (
    CANDIDATE_MODEL_TAG,
    CHALLENGER,
    CHAMPION,
    DIGEST_TAG,
    REFIT_DIGEST_TAG,
    ROLLED_BACK_TAG,
    AliasChange,
    Registry,
    RegistryError,
    lmrec_model_dir,
    model_digest,
)
from lmrec.train.tracking import Tracker

N_ITEMS = 12
HISTORIES = [np.zeros(0, dtype=np.int64), np.array([3, 1]), np.array([0, 5, 7, 11])]


def tiny_split() -> SplitData:
    """Six users over twelve items, most popular first-ish."""
    train = [np.array(t, dtype=np.int64) for t in ([0, 1, 2], [0, 1], [0, 3], [4, 5], [0], [6])]
    empty = np.zeros(0, dtype=np.int64)
    items = pd.DataFrame(
        {
            "item_idx": np.arange(N_ITEMS),
            "item_id": [f"movie-{i}" for i in range(N_ITEMS)],
            "is_cold": np.zeros(N_ITEMS, dtype=bool),
            "n_train": np.bincount(np.concatenate(train), minlength=N_ITEMS),
        }
    )
    return SplitData(
        train=train,
        val_items=np.full(len(train), -1, dtype=np.int64),
        test_items=np.array([7, 8, 9, 10, 11, 7], dtype=np.int64),
        train_times=[np.arange(len(t), dtype=np.int64) for t in train],
        user_ids=np.array([f"u{u}" for u in range(len(train))], dtype=object),
        items=items,
        cold=pd.DataFrame({"user_idx": empty, "item_idx": empty}),
    )


@dataclass(frozen=True)
class Logged:
    """A saved lmrec model directory and the MLflow model it was logged as."""

    model: Recommender
    directory: Path
    digest: str
    model_uri: str
    run_id: str

    @property
    def tags(self) -> dict[str, str]:
        return {DIGEST_TAG: self.digest}


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path
    models: tuple[Logged, ...]


def save_with_ids(model: Recommender, directory: Path, split: SplitData) -> None:
    """What the train stage writes: the model plus the catalog's item ids."""
    model.save(directory)
    ids = split.items["item_id"].astype(str).tolist()
    (directory / ITEM_IDS_FILE).write_text(json.dumps(ids))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Store]:
    """A SQLite MLflow store holding three logged models with different digests."""
    root = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{root}/mlflow.db"
    split = tiny_split()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # MLflow's artifact root (mlruns/) lands in the temp dir
        models = []
        fitted = [
            PopularityRecommender().fit(split),
            RandomRecommender(RandomParams(seed=0)).fit(split),
            RandomRecommender(RandomParams(seed=1)).fit(split),
        ]
        for i, model in enumerate(fitted):
            directory = root / f"model-{i}"
            save_with_ids(model, directory, split)
            tracker = Tracker(uri, "test")
            model_uri = tracker.log_model(directory)
            tracker.end()
            digest = model_digest(directory)
            models.append(Logged(model, directory, digest, model_uri, tracker.run_id))
        yield Store(uri, root, tuple(models))


@pytest.fixture()
def registry(store, request) -> Registry:
    """A registered model of this test's own (empty until the test registers something)."""
    name = "lmrec-" + re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    return Registry(store.uri, name)


def register(registry: Registry, logged: Logged) -> int:
    return registry.register(logged.model_uri, logged.run_id, logged.tags).number


def champion(registry: Registry) -> int | None:
    found = registry.alias(CHAMPION)
    return None if found is None else found.number


def challenger(registry: Registry) -> int | None:
    found = registry.alias(CHALLENGER)
    return None if found is None else found.number


# ----------------------------------------------------------------------- registration


def test_an_unregistered_model_has_no_versions_aliases_or_history(registry):
    assert registry.versions() == []
    assert registry.alias(CHAMPION) is None
    assert registry.history() == []
    with pytest.raises(RegistryError, match=r"has no version 1 \(versions: none\)"):
        registry.version(1)


def test_registering_the_same_digest_twice_gives_one_version(registry, store):
    first, second = store.models[:2]
    created = registry.register(first.model_uri, first.run_id, first.tags)
    again = registry.register(first.model_uri, first.run_id, first.tags)
    assert again == created
    assert [v.number for v in registry.versions()] == [1]
    assert created.digest == first.digest
    assert created.run_id == first.run_id
    assert created.aliases == ()
    assert registry.find_digest(first.digest) == created
    assert registry.find_digest(second.digest) is None
    other = registry.register(second.model_uri, second.run_id, second.tags)
    assert other.number == 2
    assert [v.digest for v in registry.versions()] == [first.digest, second.digest]
    # each version knows when it was registered (the monitor's model age)
    assert abs(other.created_at - time.time()) < 600
    assert registry.version(1).created_at <= registry.version(2).created_at


# ------------------------------------------------------------------- promote, rollback


def test_promote_and_rollback_sequence(registry, store):
    v1 = register(registry, store.models[0])
    assert registry.set_challenger(v1)
    assert registry.promote() == AliasChange(None, v1)
    assert (champion(registry), challenger(registry)) == (v1, None)
    assert registry.history() == [v1]

    v2 = register(registry, store.models[1])
    assert registry.set_challenger(v2)
    change = registry.promote()
    assert change == AliasChange(v1, v2)
    assert change.changed
    assert (champion(registry), challenger(registry)) == (v2, None)
    assert registry.version(v1).aliases == ()
    assert registry.history() == [v1, v2]

    back = registry.rollback()
    assert back == AliasChange(v2, v1)
    assert champion(registry) == v1
    assert registry.version(v2).tags[ROLLED_BACK_TAG] == "true"
    assert ROLLED_BACK_TAG not in registry.version(v1).tags
    assert registry.history() == [v1]

    # promoting the rolled-back version again clears its mark and restores the history
    assert registry.promote(v2) == AliasChange(v1, v2)
    assert ROLLED_BACK_TAG not in registry.version(v2).tags
    assert registry.history() == [v1, v2]


def test_promote_is_idempotent(registry, store):
    v1 = register(registry, store.models[0])
    v2 = register(registry, store.models[1])
    registry.promote(v1)
    registry.promote(v2)
    before = (registry.versions(), registry.history())
    for again in (registry.promote(v2), registry.promote()):  # explicit; no challenger
        assert again == AliasChange(v2, v2)
        assert not again.changed
    assert (registry.versions(), registry.history()) == before
    assert registry.history() == [v1, v2]


def test_rollback_from_a_version_steps_back_only_once(registry, store):
    v1, v2, v3 = (register(registry, m) for m in store.models)
    for number in (v1, v2, v3):
        registry.promote(number)
    assert registry.history() == [v1, v2, v3]
    registry.rollback()  # v3 -> v2
    first = registry.rollback(from_version=v2)
    assert first == AliasChange(v2, v1)
    assert first.changed
    second = registry.rollback(from_version=v2)  # a retry: v2 is no longer champion
    assert second == AliasChange(v1, v1)
    assert not second.changed
    assert champion(registry) == v1
    assert registry.history() == [v1]
    assert ROLLED_BACK_TAG not in registry.version(v1).tags


def test_rollback_with_a_single_champion_is_an_error(registry, store):
    v1 = register(registry, store.models[0])
    registry.promote(v1)
    message = rf"version {v1} is the only champion so far; there is nothing to roll back to"
    with pytest.raises(RegistryError, match=message):
        registry.rollback()
    assert champion(registry) == v1
    assert registry.history() == [v1]
    assert ROLLED_BACK_TAG not in registry.version(v1).tags


def test_rollback_without_a_champion_is_an_error(registry, store):
    register(registry, store.models[0])
    with pytest.raises(RegistryError, match="has no champion to roll back"):
        registry.rollback()


def test_promote_with_no_challenger_and_no_champion_is_an_error(registry, store):
    register(registry, store.models[0])
    with pytest.raises(RegistryError, match="has no challenger to promote"):
        registry.promote()
    assert champion(registry) is None
    assert registry.history() == []


def test_promote_of_a_missing_version_is_an_error(registry, store):
    register(registry, store.models[0])
    with pytest.raises(RegistryError, match=r"has no version 7 \(versions: 1\)"):
        registry.promote(7)
    assert champion(registry) is None


def test_set_challenger_never_moves_onto_the_champion(registry, store):
    v1 = register(registry, store.models[0])
    v2 = register(registry, store.models[1])
    registry.promote(v1)
    assert not registry.set_challenger(v1)
    assert challenger(registry) is None
    assert registry.set_challenger(v2)
    assert not registry.set_challenger(v2)  # already there
    assert not registry.set_challenger(v1)
    assert (champion(registry), challenger(registry)) == (v1, v2)
    assert registry.version(v1).aliases == (CHAMPION,)
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.set_challenger(9)


def test_promoting_another_version_keeps_the_waiting_challenger(registry, store):
    v1, v2, v3 = (register(registry, m) for m in store.models)
    registry.promote(v1)
    registry.set_challenger(v3)
    assert registry.promote(v2) == AliasChange(v1, v2)
    assert (champion(registry), challenger(registry)) == (v2, v3)
    assert registry.promote() == AliasChange(v2, v3)
    assert challenger(registry) is None
    assert registry.history() == [v1, v2, v3]


# ------------------------------------------------------------------------- artifacts


def test_download_gives_a_loadable_model_that_scores_like_the_original(registry, store, tmp_path):
    logged = store.models[0]
    number = register(registry, logged)
    model_dir = registry.download(number, tmp_path / "download")
    assert model_dir.is_relative_to(tmp_path / "download")
    assert model_dir == lmrec_model_dir(model_dir.parent.parent)
    assert model_digest(model_dir) == logged.digest  # the exact bytes that were logged
    assert json.loads((model_dir / ITEM_IDS_FILE).read_text())[:2] == ["movie-0", "movie-1"]
    loaded = load_model(model_dir)
    assert type(loaded) is type(logged.model)
    np.testing.assert_array_equal(loaded.score(HISTORIES), logged.model.score(HISTORIES))


def test_download_of_each_version_gets_its_own_model(registry, store, tmp_path):
    for logged in store.models[1:]:
        number = register(registry, logged)
        model_dir = registry.download(number, tmp_path / f"v{number}")
        loaded = load_model(model_dir)
        np.testing.assert_array_equal(loaded.score(HISTORIES), logged.model.score(HISTORIES))
        assert loaded.params == logged.model.params


def test_a_refit_version_is_served_as_its_refit_and_evaluated_as_its_candidate(
    registry, store, tmp_path
):
    candidate, refit, other = store.models
    tags = {
        DIGEST_TAG: candidate.digest,
        REFIT_DIGEST_TAG: refit.digest,
        CANDIDATE_MODEL_TAG: candidate.model_uri,
    }
    number = registry.register(refit.model_uri, refit.run_id, tags).number
    version = registry.version(number)
    assert (version.digest, version.served_digest) == (candidate.digest, refit.digest)
    served = registry.download(number, tmp_path / "served", served=True)
    evaluated = registry.download(number, tmp_path / "evaluated")
    assert model_digest(served) == refit.digest
    assert model_digest(evaluated) == candidate.digest
    np.testing.assert_array_equal(
        load_model(evaluated).score(HISTORIES), candidate.model.score(HISTORIES)
    )
    # The same candidate and refit again: the same version. Another refit: a new version.
    assert registry.register(refit.model_uri, refit.run_id, tags).number == number
    again = {**tags, REFIT_DIGEST_TAG: other.digest}
    newer = registry.register(other.model_uri, other.run_id, again).number
    assert newer != number
    assert registry.find_digest(candidate.digest).number == newer
    assert registry.find_digest(candidate.digest, refit.digest).number == number
    assert registry.find_digest(candidate.digest, "no-such-refit") is None


def test_a_version_without_a_refit_is_served_and_evaluated_as_one_model(registry, store, tmp_path):
    logged = store.models[0]
    number = register(registry, logged)
    assert registry.version(number).served_digest == logged.digest
    for served in (False, True):
        model_dir = registry.download(number, tmp_path / str(served), served=served)
        assert model_digest(model_dir) == logged.digest


def test_lmrec_model_dir_refuses_a_directory_without_an_mlmodel(tmp_path):
    with pytest.raises(RegistryError, match="not an lmrec pyfunc model"):
        lmrec_model_dir(tmp_path)


def test_model_digest_is_stable_and_changes_with_any_file(store, tmp_path):
    original = store.models[0].directory
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(original, copy)
    digest = model_digest(copy)
    assert digest == model_digest(copy) == model_digest(original)  # path-independent

    ids = copy / ITEM_IDS_FILE
    ids.write_text(ids.read_text().replace("movie-0", "movie-X"))
    changed = model_digest(copy)
    assert changed != digest

    shutil.copy(original / ITEM_IDS_FILE, ids)  # restored bytes, restored digest
    assert model_digest(copy) == digest

    (copy / "extra.json").write_text("{}")
    extra = model_digest(copy)
    assert extra != digest
    (copy / "extra.json").rename(copy / "other.json")  # same bytes, another name
    assert model_digest(copy) not in (digest, changed, extra)


def test_model_digest_of_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(LmrecError, match="not a saved model directory"):
        model_digest(tmp_path / "nope")
