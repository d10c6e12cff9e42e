//! Table-driven tests of the planner over hand-made snapshot histories.

use super::*;

/// `2024-03-01T12:00:00Z` → a UTC time.
fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test time {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// Run ids that sort like the history (oldest first), as UUIDv7 ids do.
fn run(index: usize) -> Uuid {
    Uuid::from_u128(0x1000 + index as u128)
}

fn tags(list: &[&str]) -> Vec<TagPair> {
    list.iter()
        .map(|tag| {
            let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn rules(set: impl FnOnce(&mut KeepRules)) -> KeepRules {
    let mut rules = KeepRules::default();
    set(&mut rules);
    rules
}

fn policy(rules: KeepRules) -> AppliedPolicy {
    AppliedPolicy {
        id: Uuid::from_u128(0xfeed),
        source: PolicySource::Job,
        rules,
    }
}

/// The repository of job `job`'s snapshots in these tests.
fn repository(job: u128) -> Uuid {
    Uuid::from_u128(0x5e00 + job)
}

fn job_key(job: u128) -> GroupKey {
    GroupKey {
        job_id: Some(Uuid::from_u128(job)),
        bucket_id: None,
        repository_id: Some(repository(job)),
    }
}

/// A group of job 1 whose snapshots are `history` (oldest first, run ids in
/// the same order), each `(time, tags)`.
fn group(policy: Option<AppliedPolicy>, history: &[(&str, &[&str])]) -> SnapshotGroup {
    SnapshotGroup {
        key: job_key(1),
        policy,
        snapshots: history
            .iter()
            .enumerate()
            .map(|(i, (time, tag_list))| Snapshot {
                run_id: run(i),
                time: at(time),
                tags: tags(tag_list),
                locked_until: None,
            })
            .collect(),
    }
}

fn plan_of(groups: Vec<SnapshotGroup>, objects: Vec<RetainedObject>) -> RetentionPlan {
    plan(&PlanInput {
        now: at("2025-06-01T00:00:00Z"),
        groups,
        objects,
    })
    .expect("plan")
}

/// The reasons of each run, in history order (`[]` = removed).
fn reasons_by_run(plan: &RetentionPlan, runs: usize) -> Vec<Vec<&'static str>> {
    (0..runs)
        .map(|i| {
            let decision = plan
                .decisions
                .iter()
                .find(|d| d.run_id == run(i))
                .unwrap_or_else(|| panic!("no decision for run {i}"));
            decision.reasons.iter().map(|r| r.as_str()).collect()
        })
        .collect()
}

/// Keep rules written as `rule=value` words: `"keep_daily=2 time_zone=Asia/Tokyo"`;
/// `keep_tags` takes a comma-separated list and `keep_within` seconds.
fn parse_rules(text: &str) -> KeepRules {
    let mut rules = KeepRules::default();
    for word in text.split_whitespace() {
        let (rule, value) = word
            .split_once('=')
            .unwrap_or_else(|| panic!("bad rule {word:?}"));
        let count = || value.parse::<i32>().expect("a count");
        match rule {
            "keep_last" => rules.keep_last = count(),
            "keep_hourly" => rules.keep_hourly = count(),
            "keep_daily" => rules.keep_daily = count(),
            "keep_weekly" => rules.keep_weekly = count(),
            "keep_monthly" => rules.keep_monthly = count(),
            "keep_yearly" => rules.keep_yearly = count(),
            "keep_within" => rules.keep_within_seconds = value.parse().expect("seconds"),
            "keep_tags" => rules.keep_tags = value.split(',').map(str::to_owned).collect(),
            "time_zone" => rules.time_zone = value.to_owned(),
            other => panic!("unknown rule {other:?}"),
        }
    }
    rules
}

/// A history written as snapshots separated by `;`, oldest first, each a UTC
/// time and its tags: `"2024-05-01T12:00:00Z pinned,env=prod; 2024-05-02T12:00:00Z"`.
fn parse_history(text: &str) -> Vec<(&str, Vec<&str>)> {
    text.split(';')
        .map(|snapshot| {
            let mut words = snapshot.split_whitespace();
            let time = words.next().expect("a time");
            let tags = words.flat_map(|w| w.split(',')).collect();
            (time, tags)
        })
        .collect()
}

/// The reasons per snapshot written as words separated by `;`, with `-` for a
/// removed snapshot: `"-; keep_daily; newest keep_daily"`.
fn parse_reasons(text: &str) -> Vec<Vec<&str>> {
    text.split(';')
        .map(|reasons| {
            reasons
                .split_whitespace()
                .filter(|reason| *reason != "-")
                .collect()
        })
        .collect()
}

/// The reasons per snapshot of `history` under `rules`.
fn reasons_under(rules: KeepRules, history: &str) -> Vec<Vec<&'static str>> {
    let history = parse_history(history);
    let history: Vec<(&str, &[&str])> = history
        .iter()
        .map(|(time, tags)| (*time, tags.as_slice()))
        .collect();
    let plan = plan_of(vec![group(Some(policy(rules)), &history)], vec![]);
    reasons_by_run(&plan, history.len())
}

const DAILY: &str =
    "2024-05-01T12:00:00Z; 2024-05-02T12:00:00Z; 2024-05-03T12:00:00Z; 2024-05-04T12:00:00Z";

/// `(behaviour, rules, history, reasons per snapshot)`.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "keep_last keeps the newest n",
        "keep_last=2",
        DAILY,
        "-; -; keep_last; newest keep_last",
    ),
    (
        "keep_last larger than the history keeps everything",
        "keep_last=10",
        DAILY,
        "keep_last; keep_last; keep_last; newest keep_last",
    ),
    (
        "keep_daily keeps the newest of each day",
        "keep_daily=2",
        "2024-05-01T08:00:00Z; 2024-05-01T20:00:00Z; 2024-05-02T09:00:00Z; 2024-05-02T21:00:00Z; 2024-05-03T10:00:00Z",
        "-; -; -; keep_daily; newest keep_daily",
    ),
    (
        "keep_daily counts only days that have a snapshot",
        "keep_daily=2",
        "2024-01-01T12:00:00Z; 2024-01-05T12:00:00Z; 2024-01-10T12:00:00Z",
        "-; keep_daily; newest keep_daily",
    ),
    (
        "keep_hourly keeps the newest of each hour",
        "keep_hourly=2",
        "2024-05-01T10:05:00Z; 2024-05-01T10:55:00Z; 2024-05-01T11:10:00Z; 2024-05-01T12:00:00Z",
        "-; -; keep_hourly; newest keep_hourly",
    ),
    (
        "ISO week 1 of 2025 starts on Monday 30 December 2024",
        "keep_weekly=2",
        "2024-12-29T12:00:00Z; 2024-12-30T12:00:00Z; 2025-01-03T12:00:00Z",
        "keep_weekly; -; newest keep_weekly",
    ),
    (
        "Sunday 3 January 2021 is still in ISO week 53 of 2020",
        "keep_weekly=2",
        "2020-12-28T12:00:00Z; 2021-01-03T12:00:00Z; 2021-01-04T12:00:00Z",
        "-; keep_weekly; newest keep_weekly",
    ),
    (
        // 31 March 00:30 CET, 31 March 23:30 CEST, 1 April 00:30 CEST.
        "Europe/Berlin spring-forward day has 23 hours",
        "keep_daily=3 time_zone=Europe/Berlin",
        "2024-03-30T23:30:00Z; 2024-03-31T21:30:00Z; 2024-03-31T22:30:00Z",
        "-; keep_daily; newest keep_daily",
    ),
    (
        "keep_within is relative to the newest snapshot, its limit excluded",
        "keep_within=172800",
        "2024-05-08T12:00:00Z; 2024-05-08T12:00:01Z; 2024-05-09T12:00:00Z; 2024-05-10T12:00:00Z",
        "-; keep_within; keep_within; newest keep_within",
    ),
    (
        "keep_within beyond the calendar keeps everything",
        "keep_within=9223372036854775807",
        DAILY,
        "keep_within; keep_within; keep_within; newest keep_within",
    ),
    (
        "keep_tags matches a key or a key and value",
        "keep_tags=pinned,release=v1",
        "2024-05-01T12:00:00Z pinned=forever; 2024-05-02T12:00:00Z release=v1,env=prod; 2024-05-03T12:00:00Z release=v2; 2024-05-04T12:00:00Z pinned; 2024-05-05T12:00:00Z",
        "keep_tags; keep_tags; -; keep_tags; newest",
    ),
    (
        "every rule that keeps a snapshot is listed",
        "keep_last=1 keep_daily=1 keep_monthly=2 keep_tags=pinned",
        "2024-04-20T12:00:00Z pinned; 2024-04-30T12:00:00Z; 2024-05-04T12:00:00Z pinned",
        "keep_tags; keep_monthly; newest keep_last keep_daily keep_monthly keep_tags",
    ),
];

/// `(behaviour, time zone, rules, history, reasons in UTC, reasons in the
/// zone)`: where a calendar period begins depends on the zone.
const ZONE_CASES: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "23:30 UTC is the next day in Asia/Tokyo",
        "Asia/Tokyo",
        "keep_daily=2",
        "2024-03-01T10:00:00Z; 2024-03-01T14:00:00Z; 2024-03-01T23:30:00Z",
        "-; -; newest keep_daily",
        "-; keep_daily; newest keep_daily",
    ),
    (
        "31 Jan 23:30 UTC is February in Asia/Tokyo",
        "Asia/Tokyo",
        "keep_monthly=2",
        "2024-01-15T12:00:00Z; 2024-01-31T10:00:00Z; 2024-01-31T23:30:00Z; 2024-02-10T12:00:00Z",
        "-; -; keep_monthly; newest keep_monthly",
        "-; keep_monthly; -; newest keep_monthly",
    ),
    (
        "31 Dec 23:30 UTC is the new year in Europe/Berlin",
        "Europe/Berlin",
        "keep_yearly=2",
        "2023-06-01T12:00:00Z; 2023-12-31T23:30:00Z; 2024-01-05T12:00:00Z",
        "-; keep_yearly; newest keep_yearly",
        "keep_yearly; -; newest keep_yearly",
    ),
    (
        "at the Europe/Berlin fall-back 02:30 CEST and 02:30 CET share a local hour",
        "Europe/Berlin",
        "keep_hourly=2",
        "2024-10-26T23:30:00Z; 2024-10-27T00:30:00Z; 2024-10-27T01:30:00Z",
        "-; keep_hourly; newest keep_hourly",
        "keep_hourly; -; newest keep_hourly",
    ),
];

#[test]
fn keep_rules_follow_restic_semantics() {
    for (name, rules, history, expected) in CASES {
        let reasons = reasons_under(parse_rules(rules), history);
        assert_eq!(reasons, parse_reasons(expected), "{name}");
    }
}

#[test]
fn calendar_periods_begin_in_the_policy_time_zone() {
    for (name, zone, rules, history, in_utc, in_zone) in ZONE_CASES {
        let utc = reasons_under(parse_rules(rules), history);
        assert_eq!(utc, parse_reasons(in_utc), "{name} (UTC)");
        let zoned = KeepRules {
            time_zone: (*zone).to_owned(),
            ..parse_rules(rules)
        };
        let zoned = reasons_under(zoned, history);
        assert_eq!(zoned, parse_reasons(in_zone), "{name}");
    }
}

#[test]
fn the_case_notation_reads_as_written() {
    let rules = parse_rules("keep_last=1 keep_tags=a,b=c time_zone=Asia/Tokyo");
    assert_eq!(rules.keep_last, 1);
    assert_eq!(rules.keep_tags, vec!["a", "b=c"]);
    assert_eq!(rules.time_zone, "Asia/Tokyo");
    assert_eq!(
        parse_history("2024-05-01T12:00:00Z a,b=c; 2024-05-02T12:00:00Z"),
        vec![
            ("2024-05-01T12:00:00Z", vec!["a", "b=c"]),
            ("2024-05-02T12:00:00Z", vec![])
        ]
    );
    assert_eq!(
        parse_reasons("-; newest keep_last"),
        vec![vec![], vec!["newest", "keep_last"]]
    );
}

/// The history of [`DAILY`], for tests that build groups themselves.
fn daily_history() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("2024-05-01T12:00:00Z", &[]),
        ("2024-05-02T12:00:00Z", &[]),
        ("2024-05-03T12:00:00Z", &[]),
        ("2024-05-04T12:00:00Z", &[]),
    ]
}

#[test]
fn without_a_policy_everything_is_kept() {
    let plan = plan_of(vec![group(None, &daily_history())], vec![]);
    assert!(plan.runs_to_remove().is_empty());
    assert_eq!(
        reasons_by_run(&plan, 4),
        vec![
            vec!["no_policy"],
            vec!["no_policy"],
            vec!["no_policy"],
            vec!["newest", "no_policy"],
        ]
    );
    assert!(plan.decisions.iter().all(|d| d.policy.is_none()));
}

#[test]
fn the_newest_snapshot_survives_a_policy_that_matches_nothing() {
    let tagged_only = policy(rules(|r| r.keep_tags = vec!["never-set".into()]));
    let plan = plan_of(vec![group(Some(tagged_only), &daily_history())], vec![]);
    assert_eq!(plan.runs_to_remove(), vec![run(2), run(1), run(0)]);
    assert_eq!(plan.decisions[0].reasons, vec![KeepReason::Newest]);
}

#[test]
fn decisions_are_newest_first_and_independent_of_input_order() {
    let history = daily_history();
    let ordered = group(Some(policy(rules(|r| r.keep_last = 2))), &history);
    let mut shuffled = ordered.clone();
    shuffled.snapshots.reverse();
    shuffled.snapshots.swap(0, 2);
    let a = plan_of(vec![ordered], vec![]);
    let b = plan_of(vec![shuffled], vec![]);
    assert_eq!(a, b);
    let times: Vec<_> = a.decisions.iter().map(|d| d.time).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(times, sorted);
}

#[test]
fn equal_times_are_ordered_by_run_id() {
    let history = [
        ("2024-05-01T12:00:00Z", &[] as &[&str]),
        ("2024-05-01T12:00:00Z", &[]),
    ];
    let plan = plan_of(
        vec![group(Some(policy(rules(|r| r.keep_last = 1))), &history)],
        vec![],
    );
    assert_eq!(plan.decisions[0].run_id, run(1));
    assert_eq!(plan.runs_to_remove(), vec![run(0)]);
}

#[test]
fn groups_are_evaluated_separately_and_merged_newest_first() {
    let keep_one = Some(policy(rules(|r| r.keep_last = 1)));
    let first = group(keep_one.clone(), &daily_history());
    let second = SnapshotGroup {
        key: job_key(2),
        policy: keep_one,
        snapshots: vec![
            Snapshot {
                run_id: run(10),
                time: at("2024-05-02T18:00:00Z"),
                tags: vec![],
                locked_until: None,
            },
            Snapshot {
                run_id: run(11),
                time: at("2024-05-03T18:00:00Z"),
                tags: vec![],
                locked_until: None,
            },
        ],
    };
    let plan = plan_of(vec![first, second], vec![]);
    let order: Vec<Uuid> = plan.decisions.iter().map(|d| d.run_id).collect();
    assert_eq!(
        order,
        vec![run(3), run(11), run(2), run(10), run(1), run(0)]
    );
    assert_eq!(plan.runs_to_remove(), vec![run(2), run(10), run(1), run(0)]);
    let job_of = |id: Uuid| {
        plan.decisions
            .iter()
            .find(|d| d.run_id == id)
            .map(|d| d.job_id)
    };
    assert_eq!(job_of(run(11)), Some(Some(Uuid::from_u128(2))));
}

#[test]
fn an_unknown_time_zone_fails_the_whole_plan() {
    let broken = policy(rules(|r| {
        r.keep_daily = 1;
        r.time_zone = "Mars/Olympus_Mons".into();
    }));
    let result = plan(&PlanInput {
        now: at("2025-01-01T00:00:00Z"),
        groups: vec![group(Some(broken), &daily_history())],
        objects: vec![],
    });
    match result {
        Err(DomainError::FailedPrecondition(message)) => {
            assert!(message.contains("Mars/Olympus_Mons"), "{message}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

// --- object retention -------------------------------------------------------

/// Six daily snapshots (runs 0..6) of job 1.
fn six_days() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("2024-05-01T12:00:00Z", &[]),
        ("2024-05-02T12:00:00Z", &[]),
        ("2024-05-03T12:00:00Z", &[]),
        ("2024-05-04T12:00:00Z", &[]),
        ("2024-05-05T12:00:00Z", &[]),
        ("2024-05-06T12:00:00Z", &[]),
    ]
}

fn version(id: u128, first: usize, last: Option<usize>) -> VersionSpan {
    VersionSpan {
        id: Uuid::from_u128(id),
        first_run_id: run(first),
        last_run_id: last.map(run),
        deleted: false,
        create_time: at("2024-01-01T00:00:00Z"),
        tags: vec![],
    }
}

/// An object of job 1 with versions valid in runs [0,2), [2,4), [4,..).
fn object_with(holds: Vec<ObjectHold>) -> RetainedObject {
    RetainedObject {
        object_id: Uuid::from_u128(0xb0),
        job_id: Some(Uuid::from_u128(1)),
        bucket_id: None,
        repository_id: repository(1),
        versions: vec![
            version(0xa0, 0, Some(2)),
            version(0xa1, 2, Some(4)),
            version(0xa2, 4, None),
        ],
        holds,
    }
}

fn legal_hold(held: Held) -> ObjectHold {
    ObjectHold {
        legal_hold: true,
        ..hold(held)
    }
}

/// A retention of `held` that holds nothing until its fields are set.
fn hold(held: Held) -> ObjectHold {
    ObjectHold {
        held,
        legal_hold: false,
        retain_until_time: None,
        policy: None,
    }
}

/// A retention of `held` until `time`.
fn retained_until(held: Held, time: &str) -> ObjectHold {
    ObjectHold {
        retain_until_time: Some(at(time)),
        ..hold(held)
    }
}

/// A retention of `held` by an object policy of `rules`.
fn object_policy(held: Held, rules: KeepRules) -> ObjectHold {
    ObjectHold {
        policy: Some(ObjectPolicy {
            id: Uuid::from_u128(0xabc),
            rules,
        }),
        ..hold(held)
    }
}

fn keep_last_one() -> Option<AppliedPolicy> {
    Some(policy(rules(|r| r.keep_last = 1)))
}

/// The reasons per snapshot of [`six_days`] under keep-last-1 with one object
/// of job 1 retained by `holds`.
fn six_days_with(holds: Vec<ObjectHold>) -> Vec<Vec<&'static str>> {
    let plan = plan_of(
        vec![group(keep_last_one(), &six_days())],
        vec![object_with(holds)],
    );
    reasons_by_run(&plan, 6)
}

#[test]
fn a_held_version_keeps_the_newest_snapshot_containing_it() {
    // Version a1 is valid in runs 2 and 3 (run 4 replaced it).
    assert_eq!(
        six_days_with(vec![legal_hold(Held::Version(Uuid::from_u128(0xa1),))]),
        parse_reasons("-; -; -; legal_hold; -; newest keep_last")
    );
}

#[test]
fn a_held_object_keeps_a_snapshot_of_every_version() {
    let until = retained_until(Held::Object, "2030-01-01T00:00:00Z");
    assert_eq!(
        six_days_with(vec![until]),
        parse_reasons("-; retain_until; -; retain_until; -; newest keep_last retain_until")
    );
}

#[test]
fn an_expired_retain_until_date_holds_nothing() {
    let expired = retained_until(Held::Object, "2025-05-31T23:59:59Z");
    let plan = plan_of(
        vec![group(keep_last_one(), &six_days())],
        vec![object_with(vec![expired])],
    );
    assert_eq!(plan.kept(), 1);
}

#[test]
fn deletion_markers_hold_nothing() {
    let mut object = object_with(vec![legal_hold(Held::Version(Uuid::from_u128(0xa1)))]);
    object.versions[1].deleted = true;
    let plan = plan_of(vec![group(keep_last_one(), &six_days())], vec![object]);
    assert_eq!(plan.kept(), 1);
}

#[test]
fn holds_of_other_jobs_or_repositories_do_not_apply() {
    for (job, repository_id) in [(2, repository(1)), (1, repository(0xff))] {
        let mut object = object_with(vec![legal_hold(Held::Object)]);
        object.job_id = Some(Uuid::from_u128(job));
        object.repository_id = repository_id;
        let plan = plan_of(vec![group(keep_last_one(), &six_days())], vec![object]);
        assert_eq!(plan.kept(), 1, "job {job}, {repository_id}");
    }
}

#[test]
fn runs_of_unknown_repository_keep_the_whole_range_of_a_hold() {
    let mut legacy = group(keep_last_one(), &six_days());
    legacy.key.repository_id = None;
    let held = legal_hold(Held::Version(Uuid::from_u128(0xa1)));
    let plan = plan_of(vec![legacy], vec![object_with(vec![held])]);
    let reasons = reasons_by_run(&plan, 6);
    assert_eq!(reasons[2], vec!["legal_hold"]);
    assert_eq!(reasons[3], vec!["legal_hold"]);
    assert_eq!(plan.kept(), 3);
}

#[test]
fn snapshots_without_a_job_keep_the_whole_range_of_a_hold() {
    // A deleted job's snapshots and ad-hoc ones may share a repository: the
    // run range of a version may include snapshots of the other chain.
    let mut adhoc = group(keep_last_one(), &six_days());
    adhoc.key.job_id = None;
    let mut object = object_with(vec![legal_hold(Held::Version(Uuid::from_u128(0xa1)))]);
    object.job_id = None;
    let plan = plan_of(vec![adhoc], vec![object]);
    let reasons = reasons_by_run(&plan, 6);
    assert_eq!(reasons[2], vec!["legal_hold"]);
    assert_eq!(reasons[3], vec!["legal_hold"]);
    assert_eq!(plan.kept(), 3);
}

#[test]
fn an_object_policy_keeps_the_versions_it_selects() {
    // Over the versions a0 (run 0), a1 (run 2), a2 (run 4): keep_last 2
    // keeps a2 and a1, so the newest snapshots containing them survive.
    let keep_two = object_policy(Held::Object, rules(|r| r.keep_last = 2));
    assert_eq!(
        six_days_with(vec![keep_two]),
        parse_reasons("-; -; -; object_policy; -; newest keep_last object_policy")
    );
}

#[test]
fn an_object_policy_dates_versions_by_their_first_snapshot() {
    // Versions first seen on 1, 3 and 5 May (all recorded on 1 January):
    // keep_within one day keeps only a2, so the dates come from the
    // snapshots; keep_tags picks a0 by the version's own tag.
    let within_a_day_or_audit = rules(|r| {
        r.keep_within_seconds = 86_400;
        r.keep_tags = vec!["audit".into()];
    });
    let mut object = object_with(vec![object_policy(Held::Object, within_a_day_or_audit)]);
    object.versions[0].tags = tags(&["audit=2024"]);
    assert_eq!(
        reasons_by_run(
            &plan_of(vec![group(keep_last_one(), &six_days())], vec![object]),
            6
        ),
        parse_reasons("-; object_policy; -; -; -; newest keep_last object_policy")
    );
}

#[test]
fn a_version_retention_with_a_policy_keeps_only_that_version() {
    let hold = object_policy(
        Held::Version(Uuid::from_u128(0xa0)),
        rules(|r| r.keep_last = 3),
    );
    let plan = plan_of(
        vec![group(keep_last_one(), &six_days())],
        vec![object_with(vec![hold])],
    );
    assert_eq!(reasons_by_run(&plan, 6)[1], vec!["object_policy"]);
    assert_eq!(plan.kept(), 2);
}

#[test]
fn held_versions_survive_every_policy() {
    let policies = [
        rules(|r| r.keep_last = 1),
        rules(|r| r.keep_daily = 1),
        rules(|r| r.keep_hourly = 1),
        rules(|r| r.keep_weekly = 1),
        rules(|r| r.keep_monthly = 1),
        rules(|r| r.keep_yearly = 1),
        rules(|r| r.keep_within_seconds = 1),
        rules(|r| r.keep_tags = vec!["nothing-has-this".into()]),
    ];
    let holds = [
        legal_hold(Held::Version(Uuid::from_u128(0xa0))),
        legal_hold(Held::Object),
        retained_until(Held::Version(Uuid::from_u128(0xa0)), "2025-06-01T00:00:01Z"),
    ];
    for rules in policies {
        for hold in &holds {
            let plan = plan_of(
                vec![group(Some(policy(rules.clone())), &six_days())],
                vec![object_with(vec![hold.clone()])],
            );
            // Run 1 is the newest snapshot containing a0.
            let kept = plan
                .decisions
                .iter()
                .find(|d| d.run_id == run(1))
                .expect("decision");
            assert!(kept.keep(), "{rules:?} with {hold:?} removed the held run");
            let reason = kept.reasons.last().copied();
            assert!(
                matches!(
                    reason,
                    Some(KeepReason::LegalHold | KeepReason::RetainUntil)
                ),
                "{reason:?}"
            );
        }
    }
}

#[test]
fn nothing_is_removed_without_a_policy_even_with_holds() {
    let plan = plan_of(
        vec![group(None, &six_days())],
        vec![object_with(vec![legal_hold(Held::Object)])],
    );
    assert!(plan.runs_to_remove().is_empty());
}
