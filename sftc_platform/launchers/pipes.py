"""The launchers with Dagster Pipes around them, for the assets: the step's processes get Pipes' bootstrap
variables (the context in the environment, PipesEnvContextInjector), rank 0 writes its messages to a file in the
job dir on the shared filesystem (PipesFileMessageReader tails it), the job's log streams into the step's stderr
(the run's compute logs), and a terminated run cancels the job (scancel, the JobSet deleted, the process group
killed) before the step ends.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from sftc_core.launch import EntryStep
from sftc_platform.launchers import jobs
from sftc_platform.launchers.plan import Launch, LaunchError


def launch_step(
    context: dg.AssetExecutionContext,
    step: EntryStep,
    launch: Launch,
    on_message: Callable[[object], None] | None = None,
) -> tuple[dg.PipesClientCompletedInvocation, jobs.JobOutcome]:
    """Run `step` to its end through Pipes; a job that did not succeed is a dg.Failure naming the job, its state
    and its log (retried by the asset's policy only when the cluster lost it: preemption, a failed node).
    `on_message` gets each custom message of the job as it arrives (progress, while the job runs)."""
    job_dir = jobs.new_job_dir(launch, step)
    reader = dg.PipesFileMessageReader(str(job_dir / "pipes_messages.jsonl"), cleanup_file=False)
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesEnvContextInjector(),
        message_reader=reader,
        extras={"step": step.name},
    ) as session:
        seen = [0]

        def new_messages() -> None:
            messages = session.get_custom_messages()
            for message in messages[seen[0] :]:
                on_message(message)
            seen[0] = len(messages)

        try:
            env, on_poll = session.get_bootstrap_env_vars(), new_messages if on_message else None
            outcome = jobs.run(step, launch, env=env, job_dir=job_dir, on_poll=on_poll, on_line=context.log.info)
        except LaunchError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"launcher": launch.launcher, "job_dir": dg.MetadataValue.path(str(job_dir))},
                allow_retries=exc.retryable,
            ) from None
    context.log.info(
        f"{outcome.launcher} job {outcome.job_id} ({step.name}) {outcome.status.state}; log {outcome.log_path}"
    )
    return dg.PipesClientCompletedInvocation(session), outcome
