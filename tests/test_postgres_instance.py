"""Materializations against a Dagster instance on a real local PostgreSQL, configured from
deploy/dagster.yaml (its storage and limits; the Kubernetes run launcher needs a cluster and is left out).
The server comes from .ci/with_postgres (`make test-postgres`, `.ci/run`), which sets SFTC_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml
from orchestration_standins import standin_chain

from sftc_jobs.chain import materialize_chain
from sftc_jobs.jobs import chain_keys

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("SFTC_TEST_POSTGRES_URL"),
        reason="SFTC_TEST_POSTGRES_URL is not set: `make test-postgres` or .ci/run start a local PostgreSQL and set it",
    ),
]
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def postgres_instance(tmp_path, monkeypatch):
    url = urlparse(os.environ["SFTC_TEST_POSTGRES_URL"])
    env = {
        "DAGSTER_PG_HOST": url.hostname,
        "DAGSTER_PG_PORT": str(url.port),
        "DAGSTER_PG_USERNAME": url.username,
        "DAGSTER_PG_PASSWORD": url.password or "trust-auth-ignores-it",
        "DAGSTER_PG_DB": url.path.lstrip("/"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deploy = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    del deploy["run_launcher"]  # Kubernetes Jobs need a cluster; runs here execute in this process
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(deploy))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.wipe()  # the database outlives a test run when the server is reused
        instance.wipe_all_schedules()
        yield instance


def test_chain_materializes_into_postgres_and_a_second_pass_redoes_nothing(data_dir, postgres_instance):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    instance = postgres_instance
    assert isinstance(instance.run_storage, PostgresRunStorage) and isinstance(
        instance.event_log_storage, PostgresEventLogStorage
    )
    chain = standin_chain()
    keys = chain_keys(chain)
    first = materialize_chain(chain, instance, keys)
    assert first.success and len(first.runs) == 4
    assert instance.get_materialized_partitions(dg.AssetKey("thesis_jsonl")) == {f"2012-{m:02d}" for m in range(1, 13)}
    assert instance.get_latest_materialization_event(dg.AssetKey("validation_report")) is not None
    assert {run.status for run in instance.get_runs()} == {dg.DagsterRunStatus.SUCCESS}
    # The staleness the second pass relies on is read back from PostgreSQL.
    second = materialize_chain(chain, instance, keys)
    assert second.runs == [] and set(second.up_to_date) == set(keys)
    # The deployment's limits are live on this instance.
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.tag_concurrency_limits == [
        {"key": "sftc/node", "value": "gpu", "limit": 1},
        {
            "key": "sftc/data_dir",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        },  # one writer per data directory
    ]
    assert concurrency.pool_config.default_pool_limit == 1
