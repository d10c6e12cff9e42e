"""The seeds' sequence from Python, over TLS, as a user runs it: a user and
its token, a configuration, a grant, a bucket, a job, a backup run followed
with WatchRun, its status, metadata, latest versions, duplicates, tags, a
retention plan, a restore, and an invalid request whose BadRequest detail is
decoded. Prints one JSON object with what it saw.

Usage: seeds.py PROTO_DIR HOST:PORT CA_FILE ADMIN_TOKEN DEMO_DIR
DEMO_DIR holds source/ (to back up); repo/ and restored/ are created in it.
"""
import json
import os
import sys
import tempfile

import grpc

import coffer_client
from coffer_client import Coffer, bad_request_fields, messages


def watch_to_end(api, run_id):
    """Follows WatchRun until the run is final; returns the states seen."""
    runs = messages("runs")
    final = {runs.RUN_STATE_SUCCEEDED, runs.RUN_STATE_FAILED, runs.RUN_STATE_CANCELLED}
    states = []
    for update in api.runs.WatchRun(runs.WatchRunRequest(id=run_id)):
        name = runs.RunState.Name(update.run.state)
        if not states or states[-1] != name:
            states.append(name)
        if update.run.state in final:
            return states, update.run
    raise SystemExit(f"WatchRun of {run_id} ended before the run did")


def main():
    proto_dir, address, ca_file, admin_token, demo = sys.argv[1:6]
    out_dir = tempfile.mkdtemp(prefix="coffer-python-")
    coffer_client.generate(proto_dir, out_dir)
    users, configurations, grants = messages("users"), messages("configurations"), messages("grants")
    buckets, jobs, runs = messages("buckets"), messages("jobs"), messages("runs")
    metadata, objects, tags = messages("metadata"), messages("objects"), messages("tags")
    retention, common = messages("retention"), messages("common")
    seen = {}

    channel = Coffer.channel(address, ca_file)
    admin = Coffer(channel, admin_token)

    # A user, and a token for it.
    user = admin.users.CreateUser(users.CreateUserRequest(
        user=users.User(username="python-user", email="python@example.com"))).user
    token = admin.users.CreateApiToken(users.CreateApiTokenRequest(
        user_id=user.id, display_name="python")).secret
    api = Coffer(channel, token)
    seen["me"] = api.users.GetCurrentUser(users.GetCurrentUserRequest()).user.username

    # A configuration, and a grant of the demo directory.
    admin.configurations.CreateConfiguration(configurations.CreateConfigurationRequest(
        configuration=configurations.Configuration(key="nfs_mount_path", value=demo)))
    admin.grants.CreateGrant(grants.CreateGrantRequest(grant=grants.Grant(
        grantee_id=user.id, root=demo,
        uses=[common.GRANT_USE_BACKUP_SOURCE, common.GRANT_USE_RESTORE_DESTINATION,
              common.GRANT_USE_REPOSITORY])))

    # A bucket and a job.
    os.makedirs(os.path.join(demo, "repo"), exist_ok=True)
    bucket = api.buckets.CreateBucket(buckets.CreateBucketRequest(bucket=buckets.Bucket(
        name="python", filesystem=buckets.FilesystemLocation(path=os.path.join(demo, "repo"))))).bucket
    job = api.jobs.CreateJob(jobs.CreateJobRequest(job=jobs.Job(
        name="python-daily", source_path=os.path.join(demo, "source"),
        target=common.Target(bucket=common.BucketTarget(bucket_id=bucket.id, prefix="daily"))))).job

    # A run, watched to its end, and its status.
    run = api.runs.CreateRun(runs.CreateRunRequest(backup=runs.BackupSpec(job_id=job.id))).run
    seen["watched"], _ = watch_to_end(api, run.id)
    status = api.runs.GetRun(runs.GetRunRequest(id=run.id)).run
    seen["state"] = runs.RunState.Name(status.state)
    seen["error"] = status.error
    seen["files_done"] = status.progress.files_done

    # Metadata, latest versions, duplicates.
    recorded = api.metadata.ListBackupMetadata(metadata.ListBackupMetadataRequest(run_id=run.id))
    seen["metadata_sizes"] = [m.size_bytes for m in recorded.backup_metadata]
    latest = api.objects.ListLatestVersions(objects.ListLatestVersionsRequest(job_id=job.id))
    seen["latest"] = sorted(o.path for o in latest.objects)
    duplicates = api.objects.ListDuplicates(objects.ListDuplicatesRequest(job_id=job.id))
    seen["duplicates"] = [sorted(f.path for f in g.files) for g in duplicates.groups]

    # Tags, and the runs carrying one.
    api.tags.CreateTag(tags.CreateTagRequest(tag=tags.Tag(
        resource=common.ResourceRef(kind=common.RESOURCE_KIND_RUN, id=run.id),
        key="seed", value="python")))
    tagged = api.runs.ListRuns(runs.ListRunsRequest(tag_key="seed", tag_value="python"))
    seen["tagged_runs"] = [r.id == run.id for r in tagged.runs]

    # A retention policy on the job and its plan (a dry run).
    policy = api.retention.CreateRetentionPolicy(retention.CreateRetentionPolicyRequest(
        retention_policy=retention.RetentionPolicy(name="python", keep_last=3))).retention_policy
    from google.protobuf import field_mask_pb2
    api.jobs.UpdateJob(jobs.UpdateJobRequest(
        job=jobs.Job(id=job.id, retention_policy_id=policy.id),
        update_mask=field_mask_pb2.FieldMask(paths=["retention_policy_id"])))
    plan = api.retention.PlanRetention(retention.PlanRetentionRequest(job_id=job.id))
    seen["plan"] = [(d.run_id == run.id, d.keep) for d in plan.decisions]

    # A restore of the snapshot elsewhere.
    restore = api.runs.CreateRun(runs.CreateRunRequest(restore=runs.RestoreSpec(
        snapshot_run_id=run.id, destination_path=os.path.join(demo, "restored")))).run
    _, restored = watch_to_end(api, restore.id)
    seen["restore_state"] = runs.RunState.Name(restored.state)

    # Bad input: the violated fields from the BadRequest detail.
    try:
        api.jobs.CreateJob(jobs.CreateJobRequest(job=jobs.Job(name="bad", source_path="relative/path")))
        seen["violations"] = []
    except grpc.RpcError as error:
        seen["bad_code"] = error.code().name
        seen["violations"] = sorted(bad_request_fields(error))

    print(json.dumps(seen, sort_keys=True))


if __name__ == "__main__":
    main()
